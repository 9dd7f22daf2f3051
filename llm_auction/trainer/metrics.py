"""Click-model metrics: ranking (AUC), probability quality (log loss) and calibration.

The pCTR model feeds the reward as a probability (Eq. 8 multiplies it by the bid), so ranking
alone is not enough: a model that ranks well but predicts twice the true CTR doubles the
expected revenue term against the fixed ad-count penalty. Hence calibration is reported next
to AUC. Implemented in numpy (no sklearn dependency), with ties handled exactly.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _as_arrays(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.shape[0]} vs {p.shape[0]}")
    return y, p


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as scipy's rankdata 'average')."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # boundaries of runs of equal values
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(xs.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(y, p) -> float:
    """ROC AUC by the Mann-Whitney rank formula; NaN when only one class is present."""
    y, p = _as_arrays(y, p)
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(p)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y, p) -> float:
    """Mean binary cross-entropy, predictions clipped to [1e-7, 1 - 1e-7]."""
    y, p = _as_arrays(y, p)
    if y.size == 0:
        return float("nan")
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration_ratio(p, target) -> float:
    """mean predicted / mean target; target is observed clicks or true click probabilities."""
    p = np.asarray(p, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    if t.size == 0 or t.mean() == 0:
        return float("nan")
    return float(p.mean() / t.mean())


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """Weighted mean |observed CTR - mean prediction| over equal-count bins of the prediction."""
    y, p = _as_arrays(y, p)
    if y.size == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    err = 0.0
    for chunk in np.array_split(order, min(bins, y.size)):
        if chunk.size:
            err += chunk.size * abs(y[chunk].mean() - p[chunk].mean())
    return float(err / y.size)


def click_metrics(y, p) -> dict[str, float]:
    """The evaluation a pCTR version is published with.

    ``log_loss_const`` is the loss of the best constant predictor (the observed CTR): a model
    that does not beat it has learned nothing about who clicks what.
    """
    y, p = _as_arrays(y, p)
    ctr = float(y.mean()) if y.size else float("nan")
    return {
        "auc": auc(y, p),
        "log_loss": log_loss(y, p),
        "log_loss_const": log_loss(y, np.full_like(y, ctr)) if y.size else float("nan"),
        "calibration": calibration_ratio(p, y),
        "ece": expected_calibration_error(y, p),
        "ctr": ctr,
        "mean_pred": float(p.mean()) if p.size else float("nan"),
        "n": float(y.size),
    }
