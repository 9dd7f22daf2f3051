"""`llm-auction pctr` end to end: impressions -> fit -> verified ONNX -> registry -> onnxruntime
scorer -> Eq. 8 reward; republishing the same model is a no-op; training from the warehouse.

Real parts: MiniLM embeddings, torch, ONNX files scored by onnxruntime, the file registry, and
ClickHouse (chdb here) for ``--from-clickhouse``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pandas as pd
import pytest

from llm_auction.auction import allocate, reward
from llm_auction.cli import main
from llm_auction.models.encoder import load_encoder
from llm_auction.models.pctr import PctrScorer
from llm_auction.schemas import PctrVersion, decode, encode
from llm_auction.schemas.catalog import load_catalog
from llm_auction.schemas.settings import get_settings
from llm_auction.trainer.pctr_fit import holdout_mask
from llm_auction.trainer.pctr_synth import synthetic_impressions
from llm_auction.trainer.registry import ModelRegistry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def encoder_cache(request, tmp_path_factory):
    cache = getattr(request.config, "cache", None)
    return (cache.mkdir("llma-pctr") if cache else tmp_path_factory.mktemp("pctr-cache")) / "encoder-cache.npz"


@pytest.fixture(scope="module")
def impressions(encoder_cache) -> pd.DataFrame:
    enc = load_encoder()  # the instance the CLI will reuse in this process
    enc.load_cache(encoder_cache)
    df = synthetic_impressions(enc, n_queries=1000, answers_per_query=2, replays=4, seed=0)
    enc.save_cache(encoder_cache)
    return df


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys, encoder_cache):
    monkeypatch.setenv("LLMA_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LLMA_LOG_LEVEL", "WARNING")
    get_settings.cache_clear()

    def run(*argv: str, rc: int = 0) -> dict:
        extra = ["--embedding-cache", str(encoder_cache)] if argv[1] in ("train", "eval") else []
        assert main([*argv, *extra]) == rc
        got = capsys.readouterr()
        return json.loads(got.out) if rc == 0 and argv[1] != "list" else {"out": got.out, "err": got.err}

    yield run
    get_settings.cache_clear()


def test_train_publish_score_reward_and_no_duplicate(cli, impressions, tmp_path):
    path = tmp_path / "impressions.parquet"
    impressions.to_parquet(path)
    v1 = cli("pctr", "train", "--impressions", str(path), "--seed", "0", "--cold", "--quiet", "--threads", "1")
    assert v1["version"] == "pctr-0001" and v1["parent"] is None and v1["promoted"] is True
    assert v1["metrics"]["auc"] > 0.65 and v1["n_train"] + v1["metrics"]["n_holdout"] == len(impressions)
    onnx = tmp_path / "var" / "registry" / "pctr" / "pctr-0001" / "model.onnx"
    assert v1["sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest()

    # the published ONNX model scores an answer; its pCTRs drive the Eq. 8 reward
    reg = ModelRegistry(tmp_path / "var" / "registry", "pctr")
    scorer = PctrScorer(reg.latest().artifact_path, encoder=load_encoder())
    ads = {a.ad_id: a for a in load_catalog()}
    shown = [a for a in ("Ad-2944", "Ad-7004")]
    answer = "For pour-over at home, " + " and ".join(f"@{ads[a].title}@[{a}]" for a in shown) + " are good places to start; grind fresh and weigh your water."
    alloc = allocate(answer, {a: ads[a].title for a in (*shown, "Ad-4820")})
    assert alloc.exposed == tuple(shown) and not alloc.format_error
    ctr = scorer.score("How do I brew better coffee at home?", answer, "u00001", list(alloc.exposed))
    assert set(ctr) == set(shown) and all(0.0 < p < 1.0 for p in ctr.values())
    bids = {"Ad-2944": 30, "Ad-7004": 80, "Ad-4820": 100}
    assert reward(alloc, bids, ctr) == pytest.approx(30 * ctr["Ad-2944"] + 80 * ctr["Ad-7004"] - 40)

    # the announced event round-trips the wire format
    ev = reg.get("pctr-0001").to_event()
    assert decode(encode(ev), PctrVersion) == ev and ev.sha256 == v1["sha256"]

    # a restarted worker retraining the same window from the same start publishes nothing new
    again = cli("pctr", "train", "--impressions", str(path), "--seed", "0", "--cold", "--quiet", "--threads", "1")
    assert again["version"] == "pctr-0001" and len(reg.list()) == 1

    # a warm start continues from pctr-0001 and starts where it ended
    v2 = cli("pctr", "train", "--impressions", str(path), "--seed", "0", "--epochs", "2", "--quiet", "--threads", "1")
    assert v2["version"] == "pctr-0002" and v2["parent"] == "pctr-0001" and v2["extra"]["warm_start"] is True
    assert v2["metrics"]["initial_holdout_loss"] < v1["metrics"]["initial_holdout_loss"] - 0.05
    assert v2["metrics"]["initial_holdout_loss"] == pytest.approx(v1["metrics"]["log_loss"], abs=1e-4)

    # eval scores with onnxruntime: on v1's holdout it reproduces v1's published metrics
    hold = impressions[holdout_mask(impressions["query_id"], 0.1, seed=0)]
    hold_path = tmp_path / "holdout.jsonl"
    hold.to_json(hold_path, orient="records", lines=True, date_format="iso")
    ev1 = cli("pctr", "eval", "--version", "pctr-0001", "--impressions", str(hold_path), "--quiet")
    assert ev1["version"] == "pctr-0001" and ev1["metrics"]["n"] == len(hold)
    assert ev1["metrics"]["auc"] == pytest.approx(v1["metrics"]["auc"], abs=1e-4)
    assert ev1["metrics"]["calibration"] == pytest.approx(v1["metrics"]["calibration"], abs=1e-3)

    listed = [json.loads(line) for line in cli("pctr", "list")["out"].splitlines()]
    assert [x["version"] for x in listed] == ["pctr-0001", "pctr-0002"]


def test_train_errors_are_one_line(cli, tmp_path):
    err = cli("pctr", "train", "--impressions", str(tmp_path / "missing.parquet"), "--quiet", rc=2)["err"]
    assert err.startswith("llm-auction: error:") and "no such file" in err and err.count("\n") == 1
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"query_id": ["q1"], "clicked": [True]}).to_csv(bad, index=False)
    assert "missing columns" in cli("pctr", "train", "--impressions", str(bad), "--quiet", rc=2)["err"]
    assert "no promoted version" in cli("pctr", "eval", "--impressions", str(bad), "--quiet", rc=2)["err"]


def test_train_from_clickhouse(cli, impressions, clickhouse_client, clickhouse_url, monkeypatch):
    from llm_auction.infra import warehouse
    from llm_auction.schemas import CandidateAd, ClickEvent, QueryEvent, ResponseEvent, UserProfile

    ads = {a.ad_id: a for a in load_catalog()}
    first = impressions[impressions["response_id"].str.endswith("-r0")]  # one serving per response
    responses, clicks = [], []
    for rid, g in first.groupby("response_id", sort=False):
        row = g.iloc[0]
        user = UserProfile(user_id=row["user_id"], info="A synthetic user.", interests=["coffee"])
        cands = [CandidateAd(**ads[a].model_dump(), bid=50) for a in g["ad_id"]]
        q = QueryEvent(query_id=rid, user=user, query=row["query"], candidates=cands, ts=row["ts"])
        responses.append(ResponseEvent.for_query(query_id=rid, policy_version="v0", query=q, text=row["text"], exposed_ad_ids=list(g["ad_id"]), n_ads=len(g), ts=row["ts"]))
        for ad, clicked in zip(g["ad_id"], g["clicked"]):
            clicks.append(ClickEvent(query_id=rid, ad_id=ad, clicked=bool(clicked), policy_version="v0", user_id=row["user_id"], bid=50, ts=row["ts"] + timedelta(seconds=5)))
    warehouse.insert_responses(clickhouse_client, responses)
    warehouse.insert_clicks(clickhouse_client, clicks)

    monkeypatch.setenv("LLMA_CLICKHOUSE_URL", clickhouse_url)
    get_settings.cache_clear()
    m = cli("pctr", "train", "--from-clickhouse", "--seed", "0", "--quiet", "--threads", "1", "--min-auc", "0")
    assert m["version"] == "pctr-0001" and m["data_window"]["rows"] == len(first) == m["n_train"] + m["metrics"]["n_holdout"]
    assert m["data_window"]["start"] == first["ts"].min().isoformat() and m["data_window"]["end"] == first["ts"].max().isoformat()
    assert m["metrics"]["auc"] > 0.6

    since = first["ts"].sort_values().iloc[len(first) // 2]
    later = cli("pctr", "train", "--from-clickhouse", "--since", since.isoformat(), "--limit", "1000", "--seed", "0", "--quiet", "--threads", "1", "--min-auc", "0")
    assert later["version"] == "pctr-0002" and later["parent"] == "pctr-0001"
    assert later["data_window"]["rows"] == 1000 and later["data_window"]["start"] >= since.isoformat()
