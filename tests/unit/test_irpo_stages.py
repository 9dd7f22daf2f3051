"""IRPO's pure parts: pairing, Eq. 8 scoring of samples, the config's validation, the offline set's bids,
and that a failure during DPO or publication leaves the policy registry as it was."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from llm_auction.auction import allocate, reward
from llm_auction.schemas import CandidateAd, QueryEvent, UserProfile
from llm_auction.schemas.catalog import load_catalog
from llm_auction.trainer import evaluation, irpo
from llm_auction.trainer.irpo import make_pairs, pair_table, score_samples
from llm_auction.trainer.irpo_config import IRPOConfig
from llm_auction.trainer.registry import ModelRegistry
from llm_auction.trainer.reward import Reward


def test_pairs_winner_is_argmax_and_losers_beyond_delta():
    r = [-5.0, 20.0, 12.0, 9.0, -500.0]
    assert make_pairs(r, 10.0, "all") == [(1, 0), (1, 3), (1, 4)]  # 20-12 = 8 is not > 10
    assert make_pairs(r, 10.0, "worst") == [(1, 4)]
    assert make_pairs([1.0, 1.0, 1.0], 10.0) == []  # no loser: the query is skipped
    assert make_pairs([0.0, 10.0], 10.0) == []  # exactly delta_th is not a loser
    assert make_pairs([3.0, 3.0, -20.0], 10.0) == [(0, 2)]  # ties: the first sample wins
    assert make_pairs([], 10.0) == []
    with pytest.raises(ValueError, match="pairing"):
        make_pairs([0.0, 100.0], 10.0, "best")


def test_pair_table_counts_skipped_queries():
    s = pd.DataFrame({
        "query_id": ["a"] * 3 + ["b"] * 3,
        "sample": [0, 1, 2] * 2,
        "text": ["a0", "a1", "a2", "b0", "b1", "b2"],
        "reward": [0.0, -40.0, -500.0, -9.0, -9.5, -8.0],
    })
    pairs, skipped = pair_table(s, 10.0, "all")
    assert skipped == 1 and pairs["query_id"].tolist() == ["a", "a"]
    assert pairs["chosen_text"].tolist() == ["a0", "a0"] and pairs["rejected_text"].tolist() == ["a1", "a2"]
    worst, _ = pair_table(s, 10.0, "worst")
    assert worst[["rejected_text", "rejected_reward"]].values.tolist() == [["a2", -500.0]]


def _query() -> QueryEvent:
    ads = load_catalog()[:4]
    return QueryEvent(
        query_id="q1", user=UserProfile(user_id="u1", info="A reader.", interests=["coffee"]), query="Best coffee grinder?",
        candidates=[CandidateAd(**a.model_dump(), bid=b) for a, b in zip(ads, (10, 50, 90, 3))],
    )


def test_score_samples_is_eq8_with_batched_pctr():
    q = _query()
    a, b = q.candidates[0], q.candidates[1]
    texts = [
        f"Try @{a.title}@[{a.ad_id}] for this.",
        f"Both @{a.title}@[{a.ad_id}] and @{b.title}@[{b.ad_id}] work.",
        "No ads here.",
        "Broken @Some Title@[Ad-0000].",
    ]
    calls = []

    def fake_pctr(items):
        calls.append(len(items))
        return [{ad: 0.2 for ad in ads} for _, _, ads in items]

    df = score_samples([q], [texts], fake_pctr, lam=1.0)
    assert calls == [4]  # one batched call for every sample
    assert df["sample"].tolist() == [0, 1, 2, 3]
    for row, text in zip(df.itertuples(), texts):
        alloc = allocate(text, q.candidates)
        assert math.isclose(row.reward, reward(alloc, q.bids(), {ad: 0.2 for ad in alloc.exposed}, 1.0))
        assert json.loads(row.pctr) == {ad: 0.2 for ad in alloc.exposed}
        assert json.loads(row.bids) == q.bids()
    assert df["reward"].tolist() == pytest.approx([10 * 0.2 - 10, (10 + 50) * 0.2 - 40, 0.0, -500.0])
    # lambda weighs only the penalty: revenue minus lam * (10 N^2 + 500 * error)
    low = score_samples([q], [texts], fake_pctr, lam=0.25)
    assert low["reward"].tolist() == pytest.approx([2 - 2.5, 12 - 10, 0.0, -125.0])


def test_cli_passes_lambda_to_the_epoch_and_the_evaluation():
    from llm_auction.cli import build_parser

    from llm_auction.cli.irpo import epoch_config
    from llm_auction.schemas.settings import Settings

    p = build_parser()
    assert epoch_config(p.parse_args(["irpo", "run-epoch"]), Settings()).lam == 1.0  # the paper's Eq. 8 by default
    assert epoch_config(p.parse_args(["irpo", "run-epoch", "--lam", "0.25"]), Settings()).lam == 0.25
    assert p.parse_args(["irpo", "evaluate", "--policy", "base", "--lam", "0.5"]).lam == 0.5


def test_config_validates_with_clear_messages():
    IRPOConfig()
    p = IRPOConfig.paper()
    assert (p.learning_rate, p.lr_scheduler_type, p.warmup_ratio, p.pairs_per_step, p.bf16, p.pairing) == (1e-6, "cosine", 0.1, 64, True, "all")
    c = IRPOConfig.cpu()
    assert (c.pairing, c.sft_weight, c.learning_rate, c.batch_size) == ("all", 1.0, 1e-3, 2) and p.sft_weight == 0.0 and IRPOConfig().samples_per_query == 5 and IRPOConfig().delta_th == 10.0 and IRPOConfig().beta == 0.1
    for bad, msg in [
        (dict(samples_per_query=1), "samples_per_query"),
        (dict(pairing="best"), "pairing"),
        (dict(bid_low=0), "bid_low"),
        (dict(temperature=0.0), "temperature"),
        (dict(target_modules=["lm_head"]), "lm_head"),
        (dict(max_length=1), "max_length"),
        (dict(warmup_ratio=1.0), "warmup_ratio"),
        (dict(backend="tgi"), "backend"),
        (dict(layers_to_transform=[-1]), "layers_to_transform"),
        (dict(lora_top_layers=0), "lora_top_layers"),
        (dict(sft_weight=-0.1), "sft_weight"),
    ]:
        with pytest.raises(ValueError, match=msg):
            IRPOConfig(**bad)
    assert IRPOConfig().to_dict()["beta"] == 0.1


def test_evaluation_summary_and_paired_difference():
    def frame(rewards, pctrs):
        return pd.DataFrame({
            "query_id": ["a", "a", "b", "b"], "sample": [0, 1, 0, 1], "reward": rewards, "n_ads": [1, 0, 1, 1],
            "format_error": [False, False, False, True],
            "pctr": [json.dumps(p) for p in pctrs], "bids": [json.dumps({"Ad-1": 50, "Ad-2": 10})] * 4,
        })

    before = frame([-500.0, 0.0, -10.0, -500.0], [{}, {}, {"Ad-1": 0.2}, {}])
    after = frame([0.0, 0.0, -5.0, 1.0], [{}, {}, {"Ad-1": 0.1}, {"Ad-2": 0.5}])
    assert evaluation.expected_revenue(before).tolist() == [0.0, 0.0, 10.0, 0.0]
    got = evaluation.evaluation_summary(before)
    assert got["answers"] == 4 and got["mean_reward"]["mean"] == (-250.0 + -255.0) / 2
    assert got["revenue_per_query"]["mean"] == 2.5 and got["format_error_rate"]["mean"] == 0.25
    diff = evaluation.paired_difference(after, before)
    assert diff["mean_reward"]["mean"] == ((0 + 250) + (-2 + 255)) / 2
    assert diff["revenue_per_query"]["mean"] == ((0 - 0) + ((5 + 5) / 2 - 5)) / 2


def test_offline_set_redraws_bids_per_epoch(small_world):
    cfg = IRPOConfig(queries=5)
    a = irpo.build_offline_set(small_world, cfg, irpo.epoch_bid_seed(cfg, None))
    b = irpo.build_offline_set(small_world, cfg, irpo.epoch_bid_seed(cfg, "policy-0001"))
    again = irpo.build_offline_set(small_world, cfg, irpo.epoch_bid_seed(cfg, None))
    assert [q.query_id for q in a] == [r.query_id for r in list(small_world.records("train"))[:5]]
    assert [q.bids() for q in a] == [q.bids() for q in again] and [q.bids() for q in a] != [q.bids() for q in b]
    assert all(1 <= v <= 100 for q in a for v in q.bids().values())
    with pytest.raises(ValueError, match="split has"):
        irpo.build_offline_set(small_world, IRPOConfig(queries=10_000), 0)


class _Backend:
    """Answers from a script (the AdLLM protocol's generate)."""

    class config:
        base_version = "base"
        demonstration = True

    def __init__(self, q):
        a = q.candidates[0]
        self.texts = [f"Try @{a.title}@[{a.ad_id}] today.", "Broken @X@[Ad-0000]."]

    def generate(self, queries, policy_version, n=1):
        return [[self.texts[j % 2] for j in range(n)] for _ in queries]


class _World:
    def __init__(self, q):
        self.q, self.ads = q, load_catalog()

    def records(self, split):
        return iter([object()])

    def event(self, rec, bids):
        return self.q


def test_a_failure_during_dpo_or_publish_publishes_nothing(tmp_path, monkeypatch):
    q = _query()
    reg = ModelRegistry(tmp_path / "reg", "policy")
    cfg = IRPOConfig(queries=1, samples_per_query=2, candidates_k=None)
    kw = dict(world=_World(q), backend=_Backend(q), base_model=tmp_path, registry=reg, reward=Reward(lambda items: [{ad: 0.1 for ad in ads} for _, _, ads in items], "pctr-0001"))

    def dpo_crash(*a, **k):
        raise RuntimeError("killed during DPO")

    monkeypatch.setattr(irpo, "train_dpo", dpo_crash)
    with pytest.raises(RuntimeError, match="DPO"):
        irpo.run_epoch(cfg, **kw)
    assert reg.list() == [] and not [p for p in tmp_path.joinpath("reg").rglob("*") if p.is_file() and p.name != ".lock"]

    def fake_dpo(base, parent, rows_fn, cfg, out_dir, work):
        out_dir.mkdir(parents=True)
        (out_dir / "adapter_model.safetensors").write_bytes(b"w")
        (out_dir / "adapter_config.json").write_text("{}")
        return irpo.DPOResult(out_dir, {"dpo_first_loss": math.log(2)})

    monkeypatch.setattr(irpo, "train_dpo", fake_dpo)
    import llm_auction.trainer.registry as registry_mod

    real = registry_mod.shutil.copyfile
    n = {"calls": 0}

    def flaky(src, dst, *a, **k):
        n["calls"] += 1
        if n["calls"] == 2:
            raise OSError("disk full")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(registry_mod.shutil, "copyfile", flaky)
    with pytest.raises(OSError, match="disk full"):
        irpo.run_epoch(cfg, **kw)
    assert reg.list() == [] and not list(reg.dir.glob(".tmp-*"))
    monkeypatch.setattr(registry_mod.shutil, "copyfile", real)
    res = irpo.run_epoch(cfg, **kw)
    assert res.manifest.version == "policy-0001" and res.metrics["pairs"] == 1 and res.metrics["skipped_queries"] == 0
    assert sorted(res.manifest.files) == ["adapter_config.json", "adapter_model.safetensors", "irpo_pairs.parquet", "irpo_samples.parquet"]


def test_bf16_defaults_to_native_only(monkeypatch):
    """bf16=None: autocast only where bfloat16 is native (emulated bf16 is slower than fp32)."""
    import llm_auction.models.device as device

    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: False)
    assert IRPOConfig().use_bf16 is False and IRPOConfig(use_cpu=False).use_bf16 is True and IRPOConfig(bf16=True).use_bf16 is True
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    assert IRPOConfig().use_bf16 is True and IRPOConfig(bf16=False).use_bf16 is False
    assert IRPOConfig.paper().bf16 is True
