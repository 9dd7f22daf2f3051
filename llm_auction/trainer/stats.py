"""Intervals for the evaluation's means, on scipy.

One place for the statistics an evaluation reports, so every figure with an interval is computed
the same way: a percentile bootstrap over the units given (queries, for ``irpo evaluate``: a
query's answers are averaged first, so answers to one query are not counted as independent).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_ci(values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its percentile-bootstrap interval.

    Percentile, not BCa: it stays defined when every value is equal (a policy with no format
    error, a version that never inserts an ad), where BCa's acceleration is 0/0. One value gives a
    zero-width interval at that value; no value is an error.
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if v.size == 1 or np.all(v == v[0]):
        return float(v.mean()), float(v[0]), float(v[0])
    res = stats.bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(v.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def interval(values: Sequence[float], digits: int | None = None) -> dict[str, float | list[float]]:
    """``{"mean": m, "ci95": [low, high]}`` of :func:`mean_ci`, the form reports carry; rounded to
    ``digits`` when given."""
    mean, low, high = mean_ci(values)
    if digits is not None:
        mean, low, high = round(mean, digits), round(low, digits), round(high, digits)
    return {"mean": mean, "ci95": [low, high]}


def ratio_ci(num: Sequence[float], den: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(sum(num) / sum(den), low, high): a ratio of totals (CTR: clicks over exposures) with its
    percentile-bootstrap interval, the units resampled in pairs (a resample whose ``den`` sums to 0
    has no ratio and is left out); nan where ``den`` sums to 0."""
    n, d = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if n.size == 0 or n.size != d.size:
        raise ValueError("ratio_ci needs paired values, at least one")
    if d.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(n.sum() / d.sum())
    if n.size == 1:
        return point, point, point

    # resampled by hand: scipy's bootstrap warns on the nan of a resample without exposures
    idx = np.random.default_rng(seed).integers(0, n.size, size=(n_resamples, n.size))
    tops, bottoms = n[idx].sum(axis=1), d[idx].sum(axis=1)
    ratios = tops[bottoms > 0] / bottoms[bottoms > 0]
    alpha = (1 - confidence) / 2
    low, high = np.percentile(ratios, [100 * alpha, 100 * (1 - alpha)])
    return point, float(low), float(high)


__all__ = ["interval", "mean_ci", "ratio_ci"]
