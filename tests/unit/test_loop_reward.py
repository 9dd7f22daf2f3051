"""The loop's reward step when the warehouse has too few impressions to fit pCTR on.

A pretrained policy that exposed no ads (the tiny model often names ads outside its candidates)
leaves nothing to learn from: the loop keeps the current pCTR version and goes on, instead of
stopping the whole run (a clean-clone CI run failed there with 0 impressions from 48 answers).
The warehouse read is replaced by a fixed frame; the registry and the pCTR trainer are real.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from llm_auction.learning.loop import LoopOptions, retrain_reward
from llm_auction.infra import warehouse
from llm_auction.schemas.settings import Settings
from llm_auction.trainer.pctr_fit import NoTrainingRows, PctrConfig, PctrTrainer, holdout_mask
from llm_auction.trainer.reward import NoRewardModel

from stub_encoder import HashEncoder

COLUMNS = ["query_id", "ts", "policy_version", "user_id", "query", "text", "ad_id", "bid", "clicked"]


def _pipeline(tmp_path, monkeypatch, rows: pd.DataFrame):
    monkeypatch.setattr(warehouse, "impressions", lambda client: rows)
    simulator = SimpleNamespace(answer_probabilities=lambda items: [{"Ad-1": 0.25} for _ in items])
    return SimpleNamespace(settings=Settings(data_dir=tmp_path), client=None, encoder=HashEncoder(), simulator=simulator)


def test_no_impressions_keeps_going_on_the_oracle_when_auto(tmp_path, monkeypatch):
    p = _pipeline(tmp_path, monkeypatch, pd.DataFrame(columns=COLUMNS))
    said = []
    score, version = retrain_reward(p, LoopOptions(reward="auto"), lambda msg, **kw: said.append((msg, kw)), t=1)
    assert version == "oracle"
    assert score([(None, "an answer", ["Ad-1"])]) == [{"Ad-1": 0.25}]
    skipped = [kw for msg, kw in said if msg.startswith("pCTR not retrained")]
    assert len(skipped) == 1 and skipped[0]["current"] is None and "no impressions" in skipped[0]["reason"]
    assert not (tmp_path / "registry" / "pctr").exists() or not any((tmp_path / "registry" / "pctr").iterdir())  # nothing published


def test_no_impressions_with_reward_pctr_and_no_version_is_a_clear_error(tmp_path, monkeypatch):
    p = _pipeline(tmp_path, monkeypatch, pd.DataFrame(columns=COLUMNS))
    with pytest.raises(NoRewardModel, match="--reward auto"):
        retrain_reward(p, LoopOptions(reward="pctr"), lambda msg, **kw: None, t=1)


def test_every_impression_in_the_holdout_is_no_training_rows():
    cfg = PctrConfig(holdout_fraction=0.5, seed=3, progress=False)
    ids = [f"q{i}" for i in range(50)]
    held = [q for q, h in zip(ids, holdout_mask(np.array(ids), cfg.holdout_fraction, cfg.seed)) if h][:2]
    assert len(held) == 2
    df = pd.DataFrame({"query_id": held, "user_id": ["u1", "u2"], "query": ["a", "b"], "text": ["x", "y"], "ad_id": ["Ad-1", "Ad-2"], "clicked": [True, False]})
    with pytest.raises(NoTrainingRows, match="2 impressions, all in the holdout"):
        PctrTrainer(cfg, HashEncoder()).fit(df)
