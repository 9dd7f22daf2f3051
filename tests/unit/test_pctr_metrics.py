"""Click metrics against brute-force definitions (AUC as the share of correctly ordered pairs)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm_auction.trainer.metrics import auc, calibration_ratio, click_metrics, expected_calibration_error, log_loss


def brute_auc(y, p) -> float:
    pos = [pi for yi, pi in zip(y, p) if yi]
    neg = [pi for yi, pi in zip(y, p) if not yi]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    p = np.round(rng.random(300), 1)  # many ties
    assert auc(y, p) == pytest.approx(brute_auc(y, p), abs=1e-12)


def test_auc_extremes_and_one_class():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # a constant predictor
    assert math.isnan(auc([1, 1], [0.2, 0.3]))


def test_log_loss_and_calibration_values():
    y = np.array([1, 0, 0, 0])
    p = np.array([0.5, 0.5, 0.25, 0.25])
    expected = -(np.log(0.5) + np.log(0.5) + 2 * np.log(0.75)) / 4
    assert log_loss(y, p) == pytest.approx(expected)
    assert calibration_ratio(p, y) == pytest.approx(0.375 / 0.25)
    # perfectly calibrated bins: ECE 0; clipping keeps log loss finite at p = 0 and 1
    assert expected_calibration_error([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5], bins=1) == 0.0
    assert math.isfinite(log_loss([1, 0], [0.0, 1.0]))


def test_click_metrics_constant_predictor_baseline():
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0])
    m = click_metrics(y, np.full(8, 0.25))
    assert m["auc"] == 0.5
    assert m["log_loss"] == pytest.approx(m["log_loss_const"])
    assert m["calibration"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        click_metrics([1, 0], [0.5])
