"""``llm-auction models``: build-tiny writes a loadable folder, generate prints answers with their
allocations, prepare-smollm2 skips a prepared folder; errors are one line."""

import json

import pytest

from llm_auction.cli import main
from llm_auction.schemas import encode

from models_fixtures import make_queries, tiny_model_dir  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration  # trains and loads the tiny GPT-2


def test_build_tiny_writes_a_loadable_folder(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny"
    assert main(["models", "build-tiny", "--out", str(out), "--seed", "3", "--steps", "3", "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["out"] == str(out) and info["examples"] > 0 and info["parameters"] > 100_000
    assert json.loads((out / "tiny_build.json").read_text())["config"]["steps"] == 3
    AutoModelForCausalLM.from_pretrained(str(out))
    assert AutoTokenizer.from_pretrained(str(out)).chat_template


def test_generate_prints_answers_and_allocations(tiny_model_dir, tmp_path, capsys):
    qs = make_queries(2, seed=9)
    one = tmp_path / "q.json"
    one.write_bytes(encode(qs[0]))
    assert main(["models", "generate", "--model", str(tiny_model_dir), "--query-file", str(one), "-n", "3", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy_version"] == "base" and len(out["results"]) == 1
    answers = out["results"][0]["answers"]
    assert len(answers) == 3 and all({"text", "exposed", "bids", "format_error", "reasons"} <= set(a) for a in answers)
    bids = qs[0].bids()
    assert all(a["bids"] == {x: bids[x] for x in a["exposed"]} for a in answers)

    lines = tmp_path / "qs.jsonl"
    lines.write_text("\n".join(encode(q).decode() for q in qs) + "\n")
    assert main(["models", "generate", "--model", str(tiny_model_dir), "--query-file", str(lines), "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["query_id"] for r in out["results"]] == [q.query_id for q in qs]


def test_generate_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"query_id": "q"}\n{"nope": 1}\n')
    assert main(["models", "generate", "--model", str(tiny_model_dir), "--query-file", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm-auction: error:") and "\n" not in err
    good = tmp_path / "q.json"
    good.write_bytes(encode(make_queries(1)[0]))
    assert main(["models", "generate", "--model", str(tmp_path / "none"), "--query-file", str(good)]) == 2
    assert "no Ad-LLM model at" in capsys.readouterr().err


def test_prepare_smollm2_skips_a_prepared_folder(tmp_path, capsys):
    out = tmp_path / "smol"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "llm_auction_prepared.json").write_text(json.dumps({"kind": "smollm2-135m-instruct", "seconds": 1.0}))
    assert main(["models", "prepare-smollm2", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] is True
