"""Retrain the pCTR model and publish it: warm start, fit, verified ONNX, checkpoint, registry.

One function, :func:`retrain_and_publish`, used by the stream app's retraining timer (and by
``llm-auction pctr train``). The flow:

1. warm start from the latest *promoted* version's torch weights (unless ``cold``, or they do
   not fit the config, in which case it trains from scratch and says so);
2. fit on the impressions (:class:`~llm_auction.trainer.pctr_fit.PctrTrainer`: stable per-query
   holdout, early stop on holdout log loss);
3. export ONNX (``export_onnx`` refuses a graph that differs from torch by 1e-5 or more) and the
   torch checkpoint the next retrain warm-starts from;
4. decide promotion (:func:`promotion_decision`) and publish to the registry. The registry
   returns the existing version when the same bytes were already published for the same data
   window, so a restarted worker retraining the same window does not create a duplicate.

Promotion rule: a model is promoted when its holdout AUC is at least ``min_auc`` (absolute
floor, ``LLMA_PCTR_MIN_AUC``) *and* not lower than the current promoted model's AUC by more than
``promote_margin`` (``LLMA_PCTR_PROMOTE_MARGIN``). The current model's AUC is measured on the
*new* holdout when its weights fit (the holdout is a stable hash of ``query_id``, so the current
model never trained on those rows), else taken from its manifest. A model that fails the rule is
still published (``promoted=False``), with the reason in ``extra``, so the decision is recorded.

When the impressions carry the simulator's true click probability (``click_probability``), the
metrics also hold the oracle comparison: ``oracle_auc`` (AUC of the true probabilities on the same
held-out draws: the ceiling), ``calibration_true`` = ``calibration_ratio`` (mean predicted / mean
true probability) and ``truth_corr`` (Pearson correlation of predicted and true probability).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_auction.logs import log_event
from llm_auction.models.pctr import CHECKPOINT, export_onnx, load_checkpoint, save_checkpoint
from llm_auction.trainer.pctr_fit import NoTrainingRows, PctrConfig, PctrTrainer
from llm_auction.trainer.registry import Manifest, ModelRegistry

log = logging.getLogger(__name__)

DEFAULT_MIN_AUC = 0.55
DEFAULT_PROMOTE_MARGIN = 0.02
DEFAULT_MIN_HOLDOUT_CLICKS = 5


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def promotion_decision(auc: float | None, current_auc: float | None, min_auc: float, promote_margin: float,
                       holdout_labels: tuple[int, int] | None = None, min_holdout_clicks: int = 0) -> tuple[bool, str]:
    """(promoted, reason). Promoted iff the holdout holds at least ``min_holdout_clicks`` clicked
    and as many unclicked rows (``holdout_labels`` = (clicked, unclicked); an AUC over fewer says
    little: 2 rows gave 1.0 in a short ``llm-auction loop``), ``auc >= min_auc`` and, when a current
    promoted model has an AUC, ``auc >= current_auc - promote_margin``."""
    if holdout_labels is not None and min(holdout_labels) < min_holdout_clicks:
        return False, f"holdout too small to judge: {holdout_labels[0]} clicked and {holdout_labels[1]} unclicked rows, {min_holdout_clicks} of each needed"
    if not _finite(auc):
        return False, "no holdout AUC"
    if auc < min_auc:
        return False, f"holdout AUC {auc:.4f} < min_auc {min_auc:.4f}"
    if _finite(current_auc) and auc < current_auc - promote_margin:
        return False, f"holdout AUC {auc:.4f} is more than {promote_margin:.4f} below the current model's {current_auc:.4f}"
    return True, "ok"


def retrain_and_publish(
    impressions_df: pd.DataFrame,
    registry: ModelRegistry,
    encoder: Any,
    config: PctrConfig | None = None,
    *,
    cold: bool = False,
    min_auc: float = DEFAULT_MIN_AUC,
    promote_margin: float = DEFAULT_PROMOTE_MARGIN,
    min_holdout_clicks: int = DEFAULT_MIN_HOLDOUT_CLICKS,
    extra: Mapping[str, Any] | None = None,
    encoder_cache: str | Path | None = None,
) -> Manifest:
    """Fit on ``impressions_df`` (one row per exposed ad), export, decide promotion, publish.

    Returns the registry manifest (an existing one when the same artifact was already published
    for the same data window). ``encoder_cache``: an ``.npz`` the encoder's cache is saved to
    after the texts are encoded (loading it is the caller's business).
    """
    if len(impressions_df) == 0:
        raise NoTrainingRows("no impressions to train on")
    config = config or PctrConfig()
    current = registry.latest(promoted_only=True)
    parent = None if cold else current
    init_state = None
    if parent is not None:
        ckpt = parent.path / CHECKPOINT
        if ckpt.exists():
            init_state = load_checkpoint(ckpt).state_dict()
        else:
            log_event(log, "pctr: parent has no torch weights; training from scratch", logging.WARNING, parent=parent.version)

    trainer = PctrTrainer(config, encoder)
    data = trainer.prepare(impressions_df)
    if encoder_cache is not None:
        encoder.save_cache(encoder_cache)
    try:
        result = trainer.fit(data, init_state=init_state)
    except ValueError as e:
        if init_state is None or "warm start" not in str(e):
            raise
        log_event(log, "pctr: parent does not fit this config; training from scratch", logging.WARNING, parent=parent.version, error=str(e))
        init_state = None
        result = trainer.fit(data)

    hold = data.rows(data.holdout)
    metrics: dict[str, Any] = dict(result.metrics)
    if len(hold) and hold.truth is not None:
        p = trainer.predict(result.net, hold)
        metrics["calibration_ratio"] = metrics.get("calibration_true", float("nan"))
        if np.std(p) > 0 and np.std(hold.truth) > 0:
            metrics["truth_corr"] = float(np.corrcoef(p.astype(np.float64), hold.truth)[0, 1])
        metrics["truth_mae"] = float(np.mean(np.abs(p.astype(np.float64) - hold.truth)))

    # The current promoted model's AUC, on the same holdout when its weights fit this config.
    current_auc = None
    current_auc_source = None
    if current is not None:
        ckpt = current.path / CHECKPOINT
        if len(hold) and ckpt.exists():
            try:
                current_auc = trainer.evaluate(load_checkpoint(ckpt), hold).get("auc")
                current_auc_source = "same_holdout"
            except (RuntimeError, ValueError, IndexError) as e:  # another text dim or bucket count
                log_event(log, "pctr: current model cannot score this holdout; using its recorded AUC", logging.WARNING, current=current.version, error=str(e).splitlines()[0])
        if not _finite(current_auc):
            current_auc = current.metrics.get("auc")
            current_auc_source = "manifest"
    auc = metrics.get("auc")
    clicked = int(hold.y.sum()) if len(hold) else 0
    promoted, reason = promotion_decision(auc, current_auc, min_auc, promote_margin, (clicked, len(hold) - clicked), min_holdout_clicks)
    if current is not None and _finite(current_auc):
        metrics["current_auc"] = float(current_auc)

    metrics.update(n_holdout=result.n_holdout, epochs_run=result.epochs_run, best_epoch=result.best_epoch, initial_holdout_loss=result.initial_holdout_loss, **result.timings)
    info = {
        "warm_start": init_state is not None,
        "min_auc": min_auc,
        "promote_margin": promote_margin,
        "min_holdout_clicks": min_holdout_clicks,
        "promotion": reason,
        "compared_with": current.version if current is not None else None,
        "compared_on": current_auc_source,
        "encoder": str(getattr(encoder, "path", "")),
        **dict(extra or {}),
    }
    with tempfile.TemporaryDirectory(prefix="pctr-export-") as tmp:
        tmp = Path(tmp)
        export_onnx(result.net, tmp / "model.onnx", encoder=str(getattr(encoder, "path", "")) or None)
        save_checkpoint(result.net, tmp / CHECKPOINT)
        (tmp / "config.json").write_text(json.dumps(result.config, indent=2, default=str) + "\n", encoding="utf-8")
        manifest = registry.publish(
            {"model.onnx": tmp / "model.onnx", "model.json": tmp / "model.json", CHECKPOINT: tmp / CHECKPOINT, "config.json": tmp / "config.json"},
            metrics=metrics,
            parent=parent.version if parent is not None and init_state is not None else None,
            data_window=result.data_window,
            promoted=promoted,
            main="model.onnx",
            n_train=result.n_train,
            extra=info,
        )
    log_event(
        log, "pctr: retrained", version=manifest.version, promoted=manifest.promoted, reason=reason, auc=auc, current_auc=current_auc,
        oracle_auc=metrics.get("oracle_auc"), calibration_ratio=metrics.get("calibration_ratio"), rows=result.data_window.get("rows"),
    )
    return manifest
