"""The SPA method: the seed stage, then rounds of generate -> judge -> train (arXiv 2406.04412).

- :mod:`~spreadpref.spa.loop`: the run, its plan, resume and the final model.
- :mod:`~spreadpref.spa.schedule`: which fresh prompts each round sees.
- :mod:`~spreadpref.spa.seed`, :mod:`~spreadpref.spa.generate`, :mod:`~spreadpref.spa.judge`,
  :mod:`~spreadpref.spa.train`: one function per stage, shared by the loop and the CLI
  (:mod:`~spreadpref.spa.context` is what each is given).
- :mod:`~spreadpref.spa.safeguards`: the label safeguards' formulas; :mod:`~spreadpref.spa.guard`: held-out
  agreement and the choice of the final model; :mod:`~spreadpref.spa.summary`: summary.json and the table.
"""
