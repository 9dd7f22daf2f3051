"""The CLI's small commands: help, version, settings table, score, world; errors are one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_auction.cli import main
from llm_auction.schemas import CandidateAd, QueryEvent, UserProfile, encode
from llm_auction.schemas.settings import settings_markdown_table

ROOT = Path(__file__).resolve().parents[2]


def _query_file(tmp_path) -> Path:
    q = QueryEvent(
        query_id="q7",
        user=UserProfile(user_id="u1", info="A retiree.", interests=["tea", "traditional wellness"]),
        query="Herbal teas for autumn?",
        candidates=[
            CandidateAd(ad_id="Ad-2489", title="Progesterone Tea", category="herbal tea", bid=100),
            CandidateAd(ad_id="Ad-3356", title="American Ginseng Tea", category="herbal tea", bid=41),
        ],
    )
    p = tmp_path / "q.json"
    p.write_bytes(encode(q))
    return p


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("version", "settings", "score", "world"):
        assert cmd in out


def test_console_script_runs_version():
    out = subprocess.run([sys.executable, "-m", "llm_auction.cli", "version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.1.0"


def test_score_prints_allocation_and_reward(tmp_path, capsys):
    qf = _query_file(tmp_path)
    pc = tmp_path / "p.json"
    pc.write_text(json.dumps({"Ad-2489": 0.3, "Ad-3356": 0.1}))
    answer = "[@Progesterone Tea@\\[Ad-2489\\]](#) and [@American Ginseng Tea@\\[Ad-3356\\]](#)."
    assert main(["score", "--answer", answer, "--query", str(qf), "--pctr-file", str(pc)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["exposed"] == ["Ad-2489", "Ad-3356"] and out["format_error"] is False
    assert out["expected_revenue"] == pytest.approx(100 * 0.3 + 41 * 0.1)
    assert out["reward"] == pytest.approx(34.1 - 40)


def test_score_reports_format_error(tmp_path, capsys):
    qf = _query_file(tmp_path)
    assert main(["score", "--answer", "@Progesterone Tea@[Ad-3356]", "--query", str(qf), "--pctr", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["exposed"] == [] and out["format_error"] and out["reward"] == -500.0


def test_score_bad_query_is_one_line_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"query_id": "q", "query": "x", "candidates": []}))
    assert main(["score", "--answer", "x", "--query", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "QueryEvent" in err and "'user'" in err


def test_score_missing_pctr_for_exposed_ad_is_clear(tmp_path, capsys):
    qf = _query_file(tmp_path)
    pc = tmp_path / "p.json"
    pc.write_text("{}")
    assert main(["score", "--answer", "@Progesterone Tea@[Ad-2489]", "--query", str(qf), "--pctr-file", str(pc)]) == 2
    assert "no value for exposed ad Ad-2489" in capsys.readouterr().err


def test_world_command_writes_a_small_world(tmp_path, capsys):
    assert main(["world", "--out", str(tmp_path), "--users", "10", "--seed", "1", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_queries"] == 50 and out["n_test"] == 10
    assert (tmp_path / "queries.jsonl").read_text().count("\n") == 50


def test_docs_settings_table_matches_the_code():
    page = (ROOT / "docs" / "settings.md").read_text()
    assert settings_markdown_table() in page, "docs/settings.md settings table is stale: run `make docs-settings`"
