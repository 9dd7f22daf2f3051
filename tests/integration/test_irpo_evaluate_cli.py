"""``llm-auction irpo evaluate`` end to end on the tiny model: the JSON a user reads, under the
training oracle and the held-out judge, on the same answers."""

from __future__ import annotations

import json

import pytest

from models_fixtures import tiny_model_dir  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration


def test_evaluate_reports_under_the_reward_and_the_held_out_judge(tiny_model_dir, small_world, tmp_path, capsys, monkeypatch):  # noqa: F811
    from llm_auction.cli import main
    from llm_auction.schemas.settings import get_settings

    monkeypatch.setenv("LLMA_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        rc = main(["irpo", "evaluate", "--policy", "base", "--baseline", "base", "--queries", "4", "--samples", "2", "--reward", "oracle",
                   "--backend", "transformers", "--model", str(tiny_model_dir), "--world", str(small_world.root), "--out", str(tmp_path / "reg"),
                   "--max-new-tokens", "24"])
    finally:
        get_settings.cache_clear()  # the next test reads its own environment
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["queries"], report["samples"], report["pctr_version"]) == (4, 2, "oracle")
    train, judge = report["policies"]["base"], report["judge"]["policies"]["base"]
    assert report["judge"]["name"] == "held-out-judge" and train["answers"] == judge["answers"] == 8
    assert train["format_error_rate"] == judge["format_error_rate"] and train["mean_ads"] == judge["mean_ads"]  # the same answers
    assert report["difference"]["mean_reward"]["mean"] == 0.0 == report["judge"]["difference"]["mean_reward"]["mean"]  # base vs itself
