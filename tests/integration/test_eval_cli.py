"""``llm-auction eval --quick`` end to end, as a user runs it: a policy version trained by ``irpo
run-epoch`` on the tiny model, then the evaluation in a subprocess on the embedded defaults (the
local broker it starts, embedded ClickHouse in its data folder).

Checks the report against what the run left behind: every figure of ``eval.json`` equals a
recomputation from the events stored in ClickHouse (read in this process after the run, chdb
admitting one process per folder), every mechanism answered the same queries with the same bids,
MOSAIC's cost is N generations per query, the slot auction charged its second price, and a
rerun reuses the stages instead of serving again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from models_fixtures import tiny_model_dir  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration


def _cli(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_auction.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_eval_quick_matches_the_stored_events(tiny_model_dir, small_world, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    (data / "world").symlink_to(small_world.root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMA_")}
    env |= {"LLMA_DATA_DIR": str(data), "LLMA_ADLLM_BACKEND": "transformers", "LLMA_ADLLM_MODEL": str(tiny_model_dir), "LLMA_ADLLM_THREADS": "1",
            "LLMA_CANDIDATES_K": "8"}
    trained = _cli(["irpo", "run-epoch", "--queries", "4", "--samples", "2", "--reward", "oracle", "--world", str(small_world.root),
                    "--backend", "transformers", "--model", str(tiny_model_dir), "--max-new-tokens", "24", "--dpo-epochs", "1"], env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = tmp_path / "report"
    run = _cli(["eval", "--quick", "--json", "--out", str(out)], env)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert json.loads((out / "eval.json").read_text()) == report and (out / "eval.md").exists()
    assert (out / "monotonicity.png").stat().st_size > 0 and (out / "continuity.png").stat().st_size > 0
    arms = ["pretrained", "mosaic:3", "slot", "policy:policy-0001"]
    by = {m["name"]: m for m in report["mechanisms"]}
    assert list(by) == arms and report["run"]["served_pctr"] == "oracle"
    for m in by.values():
        assert m["queries"] == 6
        for k in ("revenue_per_query", "expected_revenue_per_query", "reward_per_query", "generations_per_query", "judge_reward_per_query"):
            lo, hi = m[k]["ci95"]
            assert lo <= m[k]["mean"] <= hi
    assert by["mosaic:3"]["generations_per_query"]["mean"] == 3 and by["pretrained"]["generations_per_query"]["mean"] == 1
    assert "spearman_bid_itctr" in by["policy:policy-0001"] and "spearman_bid_itctr" in by["pretrained"]
    props = report["properties"]
    assert set(props["versions"]) == {"pretrained", "policy-0001"} and props["continuity_bids"] == [1, 25, 50, 75, 100]
    assert props["versions"]["pretrained"]["monotonicity"]["bid"] == [1, 50, 100]

    again = _cli(["eval", "--quick", "--json", "--out", str(out)], env)  # resumes: every stage is reused, nothing is served again
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["mechanisms"] == report["mechanisms"] and again.stderr.count("stage already done") == len(arms) + 2

    # the figures recomputed from the stored events, in a process of their own (chdb admits one
    # data folder per process, and this test process may hold another suite's)
    stages = {a: json.loads((out / "stages" / f"serve-{a.replace(':', '-')}.json").read_text())["run_id"] for a in arms}
    stored = _stored(data, list(stages.values()))
    rows = pd.DataFrame(stored["rows"])
    for arm, run_id in stages.items():
        mine = rows[rows["query_id"].str.contains(f".{run_id}.", regex=False)]
        assert set(mine["policy_version"]) == {arm} and len(mine) == 6
        assert by[arm]["revenue_per_query"]["mean"] == pytest.approx(mine["revenue"].mean())
        assert by[arm]["expected_revenue_per_query"]["mean"] == pytest.approx(mine["expected_revenue"].mean())
        assert by[arm]["generated_tokens_per_query"]["mean"] == pytest.approx(mine["generated_tokens"].mean())
        assert by[arm]["ads_per_answer"]["mean"] == pytest.approx(mine["n_ads"].mean())
    bids = stored["bids"]
    assert len(bids) == 6 and all(len(b) == 1 for _, b in bids)  # the same queries with the same bids for every mechanism
    prices = stored["slot_prices"]
    assert prices[0] == prices[1] > 0  # every slot click carries its second price, never above the bid


READ_STORED = """
import json, sys
from llm_auction.infra import warehouse
from llm_auction.infra.clickhouse import get_client
from llm_auction.schemas.settings import Settings
client = get_client(Settings(data_dir=sys.argv[1]).resolved_clickhouse_url())
rows = warehouse.answer_rows(client, sys.argv[2:])
bids = client.query(
    "SELECT replaceRegexpOne(query_id, '\\\\.eval-[^.]+\\\\.', '.') AS key, groupUniqArray(toString(bids)) AS b "
    "FROM llm_auction.queries FINAL WHERE query_id LIKE '%.eval-%' GROUP BY key").result_rows
prices = client.query("SELECT count(), countIf(price IS NOT NULL AND price <= bid) FROM llm_auction.clicks FINAL WHERE policy_version = 'slot'").result_rows[0]
print(json.dumps({"rows": rows.to_dict(orient="records"), "bids": [list(b) for b in bids], "slot_prices": list(prices)}, default=str))
"""


def _stored(data, run_ids: list[str]) -> dict:
    """What the warehouse in ``data`` holds for the runs, read by another process."""
    out = subprocess.run([sys.executable, "-c", READ_STORED, str(data), *run_ids], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
