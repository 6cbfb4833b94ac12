"""Statistics of evaluation: win rates with bootstrap intervals, length control, binomial intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def win_rate_with_ci(p: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> dict[str, float]:
    """Mean preference and a percentile bootstrap interval over prompts."""
    result = {"win_rate": float(p.mean())}
    if resamples and len(p) > 1:
        rng = np.random.default_rng(seed)
        means = p[rng.integers(0, len(p), size=(resamples, len(p)))].mean(axis=1)
        tail = (1 - level) / 2
        result.update(ci_low=float(np.quantile(means, tail)), ci_high=float(np.quantile(means, 1 - tail)))
    return result


def length_controlled_win_rate(p: np.ndarray, length_difference: np.ndarray, l2: float = 1e-2) -> float:
    """sigmoid(w0) of a logistic fit p ~ sigmoid(w0 + w1 * tanh(dlen / scale)), soft targets.

    Like AlpacaEval 2's length control: the preference the judge would give at equal lengths.
    Fitted by Newton's method with a small ridge so that separable data stays finite.
    """
    scale = float(np.std(length_difference)) or 1.0
    x = np.stack([np.ones_like(p), np.tanh(length_difference / scale)], axis=1)
    w = np.zeros(2)
    penalty = np.diag([0.0, l2]) * len(p)
    for _ in range(50):
        q = 1.0 / (1.0 + np.exp(-x @ w))
        gradient = x.T @ (q - p) + penalty @ w
        hessian = (x * (q * (1 - q))[:, None]).T @ x + penalty + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1.0 / (1.0 + math.exp(-w[0])))


Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default); (nan, nan) for n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible for small n and for
    proportions near 0 or 1. ``successes`` may be fractional (ties counted as one half).
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Clamped to contain p: at p = 1 rounding can leave centre + half a hair below it.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def proportion(successes: float, n: int) -> dict[str, float | int | None]:
    """A proportion with its 95% Wilson interval, as summaries and reports store it (None for n = 0: strict JSON)."""
    if n <= 0:
        return {"rate": None, "ci_low": None, "ci_high": None, "n": 0}
    low, high = wilson_interval(successes, n)
    return {"rate": successes / n, "ci_low": low, "ci_high": high, "n": n}


# Two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal's 1.96 is within 4%).
T_975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
    20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
    29: 2.045, 30: 2.042,
}  # fmt: skip


def t_interval(values: Sequence[float]) -> dict[str, float | int]:
    """Mean of ``values`` with the half-width of its 95% t-interval (over seeds, say); half-width 0 for one value."""
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "half_width": float("nan"), "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "half_width": 0.0, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "half_width": T_975.get(n - 1, 1.96) * sd / math.sqrt(n), "n": n}
