"""The SPA method: the seed stage, then rounds of generate -> judge -> train (arXiv 2406.04412).

- :mod:`~spreadpref.spa.loop`: the run, its plan, resume and the per-round summary.
- :mod:`~spreadpref.spa.schedule`: which fresh prompts each round sees.
- :mod:`~spreadpref.spa.stages`: one function per stage, shared by the loop and the CLI.
- :mod:`~spreadpref.spa.judge`: the judge stage's scoring and pairing.
"""
