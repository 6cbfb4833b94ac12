"""The machinery every stage relies on, and nothing about the method.

- :mod:`~spreadpref.runtime.files`: atomic writes (temporary file, then one rename), JSON and JSONL.
- :mod:`~spreadpref.runtime.units`: the resumable unit engine (finished units survive a kill).
- :mod:`~spreadpref.runtime.manifest`: what each stage did, with which fingerprint, and whether it finished.
- :mod:`~spreadpref.runtime.fingerprint`: content hashes of settings and data.
- :mod:`~spreadpref.runtime.distributed`: the process group under ``accelerate launch``.
- :mod:`~spreadpref.runtime.progress`: progress bars, the console, table cells.
"""
