"""Click-model metrics: ranking (AUC), probability quality (log loss) and calibration.

The pCTR model feeds the reward as a probability (Eq. 8 multiplies it by the bid), so ranking
alone is not enough: a model that ranks well but predicts twice the true CTR doubles the
expected revenue term against the fixed ad-count penalty. Hence calibration is reported next
to AUC. AUC and log loss are scikit-learn's; calibration and ECE, which it does not report this way,
are computed here.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

EPS = 1e-7


def _as_arrays(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.shape[0]} vs {p.shape[0]}")
    return y, p


def auc(y, p) -> float:
    """ROC AUC (scikit-learn's, ties counted as half); NaN when only one class is present."""
    y, p = _as_arrays(y, p)
    pos = y > 0.5
    if pos.all() or not pos.any():
        return float("nan")
    return float(roc_auc_score(pos, p))


def log_loss(y, p) -> float:
    """Mean binary cross-entropy (scikit-learn's), predictions clipped to [1e-7, 1 - 1e-7]; NaN when empty."""
    y, p = _as_arrays(y, p)
    if y.size == 0:
        return float("nan")
    return float(sk_log_loss(y > 0.5, np.clip(p, EPS, 1 - EPS), labels=[False, True]))


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
