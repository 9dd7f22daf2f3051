"""The evaluation's logic without the pipeline: options, the trained-on refusal, the table's statistics."""

from __future__ import annotations

import numpy as np
import pytest

from llm_auction.learning.eval_figures import table
from llm_auction.learning.mechanism_eval import EvalOptions, resolve_policies, trained_on_overlap
from llm_auction.trainer.registry import ModelRegistry


def publish(reg: ModelRegistry, tmp_path, name: str, window: dict, parent: str | None = None) -> str:
    src = tmp_path / f"src-{name}"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    (src / "adapter_model.safetensors").write_bytes(name.encode() * 16)
    return reg.publish(src, data_window=window, parent=parent, main="adapter_model.safetensors", extra={"policy_kind": "lora"}).version


def test_a_version_trained_on_the_queries_or_descending_from_one_is_refused(tmp_path, small_world):
    reg = ModelRegistry(tmp_path / "reg", "policy")
    test_ids = [r.query_id for r in small_world.records("test")]
    clean = publish(reg, tmp_path, "a", {"split": "train", "query_offset": 0, "queries": 8})
    leaky = publish(reg, tmp_path, "b", {"split": "test", "query_offset": 2, "queries": 3}, parent=clean)
    child = publish(reg, tmp_path, "c", {"split": "train", "query_offset": 8, "queries": 8}, parent=leaky)
    assert trained_on_overlap(reg, small_world, clean, set(test_ids)) == {}
    assert trained_on_overlap(reg, small_world, child, set(test_ids)) == {leaky: sorted(test_ids[2:5])}
    assert trained_on_overlap(reg, small_world, child, set(test_ids[:2])) == {}  # other test queries: nothing to refuse
    assert resolve_policies(["latest", clean, "none"], reg) == [child, clean]
    with pytest.raises(ValueError, match="not in"):
        resolve_policies(["policy-0099"], reg)


def test_options_refuse_what_cannot_run():
    with pytest.raises(ValueError, match="queries must be >= 2"):
        EvalOptions(queries=1)
    with pytest.raises(ValueError, match="bid_levels"):
        EvalOptions(bid_levels=[50, 50])
    assert EvalOptions(continuity_step=25).continuity_bids() == [1, 25, 50, 75, 100]
    assert EvalOptions.quick(queries=9).queries == 9


def _rows(arm: str, values: list[float], clicks: list[int], n_ads: list[int]) -> list[dict]:
    cols = ("revenue", "expected_revenue", "reward", "realized_reward", "judge_expected_revenue", "judge_reward", "format_error",
            "generations", "generated_tokens", "generation_s")
    return [{"arm": arm, "key": f"q{i}", **{c: v for c in cols}, "clicks": c, "n_ads": n} for i, (v, c, n) in enumerate(zip(values, clicks, n_ads))]


def test_the_table_means_intervals_ratio_and_paired_difference():
    base = _rows("pretrained", [1.0, 2.0, 3.0, 4.0], [0, 1, 0, 1], [1, 1, 2, 0])
    other = _rows("mosaic:20", [2.0, 2.0, 5.0, 4.0], [1, 1, 1, 0], [1, 2, 1, 1])[::-1]  # order does not matter: paired by key
    t = {m["name"]: m for m in table(base + other, ["pretrained", "mosaic:20", "slot"])}
    assert list(t) == ["pretrained", "mosaic:20"]  # an arm without answers has no row
    assert t["pretrained"]["revenue_per_query"]["mean"] == pytest.approx(2.5) and t["mosaic:20"]["queries"] == 4
    lo, hi = t["pretrained"]["revenue_per_query"]["ci95"]
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert t["pretrained"]["ctr"]["mean"] == pytest.approx(2 / 4) and t["mosaic:20"]["ctr"]["mean"] == pytest.approx(3 / 5)
    d = t["mosaic:20"]["vs_pretrained"]
    assert d["queries"] == 4 and d["revenue_per_query"]["mean"] == pytest.approx(np.mean([1.0, 0.0, 2.0, 0.0]))
    assert "vs_pretrained" not in t["pretrained"]


def test_the_report_carries_each_swept_versions_spearman_and_writes_its_figures(tmp_path):
    from types import SimpleNamespace

    from llm_auction.learning import eval_report

    rows = _rows("pretrained", [1.0, 2.0], [0, 1], [1, 1]) + _rows("policy:policy-0002", [3.0, 5.0], [1, 1], [1, 2])
    curve = {"bid": [1, 50, 100], "itctr": [0.0, 0.01, 0.03], "smoothed": [0.003, 0.013, 0.02], "exposure": [0.0, 0.5, 1.0], "answers": [2, 2, 2]}
    props = {"query_id": "q1", "ad_id": "Ad-0001", "continuity_bids": [1, 50, 100], "bid_levels": [1, 50, 100],
             "versions": {"pretrained": {"spearman_bid_itctr": 0.5, "monotonicity": {"bid": [1, 50, 100], "itctr": [0.0, 0.02, 0.01]},
                                         "continuity": curve, "max_jump": 0.01, "max_jump_at": 1,
                                         "incentives": {"utility_maximizer": {"best_bid": 50.0, "gain_over_truthful": 0.1, "individually_rational_when_truthful": True}}},
                          "policy-0002": {"spearman_bid_itctr": 1.0}},
             "slot_step": {"bid": [1, 50, 100], "itctr": [0.0, 0.0, 0.04]}}
    settings = SimpleNamespace(adllm_backend="vllm", resolved_adllm_model=lambda: "/m/smollm2", candidates_k=8)
    report = eval_report.build(rows, props, EvalOptions(), arms=["pretrained", "policy:policy-0002"], served="pctr-0001", settings=settings)
    by = {m["name"]: m for m in report["mechanisms"]}
    assert by["pretrained"]["spearman_bid_itctr"] == 0.5 and by["policy:policy-0002"]["spearman_bid_itctr"] == 1.0
    eval_report.write(report, rows, props, tmp_path)
    md = (tmp_path / "eval.md").read_text()
    assert "| policy:policy-0002 | 2 | 4.00 [" in md and "pctr-0001" in md and "| pretrained | 0.500 |" in md
    assert (tmp_path / "monotonicity.png").stat().st_size > 1000 and (tmp_path / "continuity.png").stat().st_size > 1000


def test_the_continuity_sweep_takes_an_ad_the_pretrained_policy_wrote(small_world):
    from llm_auction.learning.mechanism_eval import continuity_pair
    from llm_auction.producers.replay import ReplayConfig, replay_events

    shown = list(replay_events(small_world, ReplayConfig(split="test", limit=3, seed=1, run_id="eval")))
    key = shown[1].query_id.replace(".eval.", ".")
    ad = shown[1].candidates.ad_ids[5]
    rows = [{"arm": "mosaic:20", "key": shown[0].query_id.replace(".eval.", "."), "exposed_ad_ids": [shown[0].candidates.ad_ids[0]]},
            {"arm": "pretrained", "key": shown[0].query_id.replace(".eval.", "."), "exposed_ad_ids": []},
            {"arm": "pretrained", "key": key, "exposed_ad_ids": [ad]}]
    q, a = continuity_pair(shown, rows, seed=0)
    assert (q.query_id, a) == (shown[1].query_id, ad)
    q, a = continuity_pair(shown, rows[:2], seed=0)  # nothing exposed: the first query, a seeded candidate
    assert q is shown[0] and a in shown[0].candidates.ad_ids
