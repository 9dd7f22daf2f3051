"""The loop with a real Ad-LLM in it: the tiny GPT-2 (built in-project) answers replayed queries,
and what lands in ClickHouse is exactly what the mechanism reads from its text."""

from __future__ import annotations

import uuid

import pytest
from models_fixtures import tiny_adllm, tiny_model_dir  # noqa: F401  (session fixtures)

from llm_auction.auction import allocate
from llm_auction.consumers import build
from llm_auction.infra import warehouse
from llm_auction.infra.kafka import ensure_topics, make_producer
from llm_auction.models.user_sim import make_user_simulator
from llm_auction.producers.replay import ReplayConfig, replay
from llm_auction.schemas.settings import Settings

pytestmark = pytest.mark.integration


def test_tiny_model_answers_flow_into_the_warehouse_as_the_mechanism_reads_them(kafka_bootstrap, clickhouse_client, text_encoder, small_world, tiny_adllm):  # noqa: F811
    # all 100 candidates shown: the tiny model learned the whole catalog and does not read the list
    # (with 8 shown, its ads are mostly "unknown id" format errors, which the mechanism flags)
    s = Settings(kafka_bootstrap=kafka_bootstrap, adllm_backend="transformers", candidates_k=None, adllm_batch_size=8, sink_batch_max_wait_s=0.3, policy_version="base", seed=13)
    ensure_topics(s, kafka_bootstrap)
    producer = make_producer(s, kafka_bootstrap)
    sim = make_user_simulator("embedding", seed=s.seed, encoder=text_encoder)
    loop = build.local_loop(s, kafka_bootstrap, producer, tiny_adllm, sim, clickhouse_client, build.candidate_picker(s, text_encoder)).start()
    try:
        run = uuid.uuid4().hex[:8]
        n = replay(small_world, producer, ReplayConfig(split="test", limit=16, run_id=run, seed=6), progress=False)
        loop.wait_drained(n, timeout_s=300)
    finally:
        loop.close()
        producer.close()

    rows = clickhouse_client.query(
        "SELECT query_id, text, exposed_ad_ids, n_ads, format_error, shown_ad_ids, policy_version FROM llm_auction.responses FINAL"
    ).named_results()
    rows = [r for r in rows if f".{run}." in r["query_id"]]
    assert len(rows) == n
    catalog = {a.ad_id: a.title for a in small_world.ads}
    for r in rows:
        assert r["policy_version"] == "base" and len(r["shown_ad_ids"]) == 100 and r["text"].strip()
        # what was stored is exactly the mechanism's reading of the stored text over the shown ads
        alloc = allocate(r["text"], {a: catalog[a] for a in r["shown_ad_ids"]})
        assert list(r["exposed_ad_ids"]) == list(alloc.exposed) and r["n_ads"] == alloc.n_ads
        assert bool(r["format_error"]) == alloc.format_error
    # the tiny model was trained to insert markers: some answers expose ads
    assert sum(r["n_ads"] for r in rows) > 0
    t = warehouse.totals(clickhouse_client)
    assert t["click_events"] == sum(r["n_ads"] for r in rows) == loop.user_sim.stats["produced"]
