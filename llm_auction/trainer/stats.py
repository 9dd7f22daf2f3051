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


__all__ = ["mean_ci"]
