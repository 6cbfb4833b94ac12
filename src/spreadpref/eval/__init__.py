"""Measuring a run: held-out win rates and agreement, statistics, and the run's report.

- :mod:`~spreadpref.eval.evaluate`: ``spreadpref eval``.
- :mod:`~spreadpref.eval.stats`: win rates with intervals, length control, binomial intervals.
- :mod:`~spreadpref.eval.report`: ``report.md`` and its plots.
"""
