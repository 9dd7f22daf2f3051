"""``llm-auction loop`` end to end, as a user runs it: one subprocess on the embedded defaults (the
local broker it starts, embedded ClickHouse in its data folder), the tiny model in the transformers
backend, two epochs of serve -> pCTR retrain -> IRPO -> canary -> decision.

Checks what the table claims against what the run left behind: every query answered once and
counted in exactly one row, each epoch's candidate trained from that epoch's stable version (its
manifest's parent), the stable version of the next epoch following the decision, each canary
decided once in ClickHouse's decisions table (read back by ``llm-auction monitor`` in a second
process, since chdb admits one process per folder), and the report's PNGs written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _run(args: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "llm_auction.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_two_epochs_of_the_loop(tiny_model_dir, small_world, tmp_path):
    from llm_auction.learning.loop import LoopOptions

    data = tmp_path / "data"
    data.mkdir()
    (data / "world").symlink_to(small_world.root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMA_")}
    env |= {"LLMA_DATA_DIR": str(data), "LLMA_ADLLM_BACKEND": "transformers", "LLMA_ADLLM_MODEL": str(tiny_model_dir), "LLMA_ADLLM_THREADS": "1"}
    serve, canary, report = 48, 48, tmp_path / "report"
    out = _run(["loop", "--epochs", "2", "--serve-queries", str(serve), "--canary-queries", str(canary), "--irpo-queries", "12",
                "--samples", "4", "--min-queries", "6", "--json", "--out", str(report)], env, timeout=600)
    budget, chunk_ends, sent = canary + canary // 2, [], 0  # the canary replays chunks until a decision or its budget
    while sent < budget:
        sent += min(LoopOptions.chunk, budget - sent)
        chunk_ends.append(sent)
    rows = json.loads(out.stdout)["epochs"]  # stdout is the JSON alone (TRL's log lines go to stderr)

    first = rows[0]
    assert (first["epoch"], first["version"], first["role"]) == (0, "base", "stable")
    assert first["metrics"]["queries"] == serve
    registry = data / "registry" / "policy"
    stable = "base"
    answered = serve
    for t in (1, 2):
        arms = [r for r in rows if r["epoch"] == t]
        assert [r["role"] for r in arms] == ["stable", "candidate"], arms
        old, new = arms
        assert old["version"] == stable and new["version"] == f"policy-000{t}"
        manifest = json.loads((registry / new["version"] / "manifest.json").read_text())
        assert manifest["parent"] == (None if stable == "base" else stable)  # trained from the epoch's stable policy
        assert new["reward_model"] == manifest["extra"]["pctr_version"]
        assert new["decision"] in ("promoted", "rolled_back", "inconclusive", "undecided")
        served = old["metrics"].get("queries", 0) + new["metrics"].get("queries", 0)
        assert served in chunk_ends  # whole chunks, within the budget
        if new["decision"] == "undecided":
            assert served == chunk_ends[-1]
        answered += served
        if new["decision"] == "promoted":
            stable = new["version"]

    snap = json.loads(_run(["monitor", "--once", "--json", "--decisions", "100"], env, timeout=300).stdout)
    assert snap["totals"]["queries"] == snap["totals"]["responses"] == answered
    decisions = snap["rollout"]["decisions"][::-1]  # oldest first
    assert [d["state"] for d in decisions if d["state"] == "canary"] == ["canary", "canary"]
    terminal = [(d["version"], d["state"]) for d in decisions if d["state"] in ("promoted", "rolled_back", "inconclusive")]
    expected = [(r["version"], r["decision"]) for r in rows if r["role"] == "candidate" and r["decision"] != "undecided"]
    assert terminal == expected  # each decided once, as the table says
    assert len({d["decision_id"] for d in decisions}) == len(decisions)
    assert (report / "revenue_per_minute.png").stat().st_size > 10_000 and (report / "summary.md").exists()
