"""The streaming loop end to end on real parts: replay -> responder -> user simulator -> sink,
through a real Kafka broker into a real ClickHouse, with the real MiniLM click model.

The Ad-LLM here is the stored-answer backend (the LLM is exercised by the tiny-model test and the
models tests); everything else is what production runs.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from llm_auction.consumers import build
from llm_auction.consumers.service import run_in_threads
from llm_auction.infra import warehouse
from llm_auction.infra.kafka import ensure_topics, make_consumer, make_producer, open_reader
from llm_auction.models.stored_backend import StoredAnswerBackend
from llm_auction.models.user_sim import make_user_simulator
from llm_auction.producers.replay import ReplayConfig, replay
from llm_auction.schemas import CandidateAd, ClickEvent, DeadLetter, QueryEvent, UserProfile, decode, encode
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import CLICKS, DEAD_LETTER, QUERIES, RESPONSES

pytestmark = pytest.mark.integration


def _settings(bootstrap: str) -> Settings:
    # top-3 retrieval: the stored answer then names a relevant ad (mean click probability ~0.14),
    # so 40 queries draw clicks and the revenue checks are never vacuous
    return Settings(kafka_bootstrap=bootstrap, adllm_backend="stored", candidates_k=3, adllm_batch_size=16, sink_batch_size=500, sink_batch_max_wait_s=0.3, seed=11)


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _read_topic(settings, bootstrap, topic, model, keep, expect: int, timeout_s: float = 30.0):
    """Everything on ``topic`` (from the start, own group) whose event passes ``keep``."""
    consumer = make_consumer(settings, bootstrap, f"reader-{uuid.uuid4().hex[:6]}", [topic])
    out: dict[str, object] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(out) < expect:
            for recs in consumer.poll(timeout_ms=300).values():
                for r in recs:
                    ev = decode(r.value, model)
                    if keep(ev):
                        out[ev.event_id] = ev
    finally:
        consumer.close()
    return list(out.values())


@pytest.fixture
def loop(kafka_bootstrap, clickhouse_client, text_encoder):
    """Responder, user simulator and sink running in threads, and a producer for the test."""
    s = _settings(kafka_bootstrap)
    ensure_topics(s, kafka_bootstrap)
    producer = make_producer(s, kafka_bootstrap)
    sim = make_user_simulator("embedding", seed=s.seed, encoder=text_encoder)
    pick = build.candidate_picker(s, text_encoder)
    loop = build.local_loop(s, kafka_bootstrap, producer, StoredAnswerBackend(), sim, clickhouse_client, pick).start()
    yield s, producer, loop
    loop.close()
    producer.close()


def test_every_query_answered_clicked_and_billed_exactly_once(loop, small_world, clickhouse_client, kafka_bootstrap):
    s, producer, loop = loop
    run = uuid.uuid4().hex[:8]
    n = replay(small_world, producer, ReplayConfig(split="test", limit=40, run_id=run, seed=3), progress=False)
    assert n == 40
    loop.wait_drained(n, timeout_s=90)
    mine = lambda ev: f".{run}." in ev.query_id  # noqa: E731
    clicks = _read_topic(s, kafka_bootstrap, CLICKS, ClickEvent, mine, loop.user_sim.stats["produced"])

    t = warehouse.totals(clickhouse_client)
    assert t["queries"] == n and t["responses"] == n
    assert t["click_events"] == len(clicks) == loop.user_sim.stats["produced"]
    assert t["clicks"] == sum(c.clicked for c in clicks)
    # the stored answer exposes exactly one ad per query, so one decision per query
    assert len(clicks) == n
    expected_revenue = sum(c.bid for c in clicks if c.clicked)
    assert t["revenue"] == pytest.approx(expected_revenue)
    assert 0 < sum(c.clicked for c in clicks) < n  # the click model is stochastic, not all-or-nothing
    (pol,) = warehouse.revenue_by_policy(clickhouse_client)
    assert pol["policy_version"] == "base" and pol["queries"] == n and pol["exposures"] == n
    assert pol["revenue"] == pytest.approx(expected_revenue)
    assert pol["revenue_per_query"] == pytest.approx(expected_revenue / n)
    assert sum(m["revenue"] or 0 for m in warehouse.revenue_per_minute(clickhouse_client)) == pytest.approx(expected_revenue)


def _next_offsets(settings, bootstrap, topic: str) -> dict[int, int]:
    """Per partition of ``topic``: the offset after its last record, read from the records themselves
    (Tansu's ListOffsets(latest) can come back short, so end_offsets is not used)."""
    consumer = open_reader(settings, bootstrap, [topic])
    ends: dict[int, int] = {}
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 2.0:
            polled = consumer.poll(timeout_ms=300)
            for recs in polled.values():
                for r in recs:
                    ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
            if polled:
                quiet_since = time.monotonic()
    finally:
        consumer.close()
    return ends


def test_a_stopped_loop_has_committed_exactly_what_it_consumed(loop, small_world, kafka_bootstrap):
    """Offsets are committed explicitly, batch by batch once the outputs are acknowledged; after a
    graceful stop each service's group stands right after the last record of every partition it
    read: nothing left to replay, nothing skipped."""
    from kafka import KafkaAdminClient, TopicPartition

    from llm_auction.infra.kafka import client_config

    s, producer, lp = loop
    n = replay(small_world, producer, ReplayConfig(split="test", limit=30, run_id=uuid.uuid4().hex[:8], seed=5), progress=False)
    lp.wait_drained(n, timeout_s=90)
    lp.close()
    assert all(not t.is_alive() for t in lp.threads)
    admin = KafkaAdminClient(**client_config(s, kafka_bootstrap))
    try:
        for svc in lp.services:
            for topic in svc.config.topics:
                ends = _next_offsets(s, kafka_bootstrap, topic)
                assert ends, f"{topic} is empty"
                group = svc.config.group_id
                committed = admin.list_group_offsets({group: [TopicPartition(topic, p) for p in ends]})[group]
                got = {tp.partition: om.offset for tp, om in committed.items()}
                assert got == ends, f"{svc.config.name} on {topic}: committed {got}, records end at {ends}"
    finally:
        admin.close()


def test_poison_messages_are_dead_lettered_and_totals_unaffected(loop, small_world, clickhouse_client, kafka_bootstrap):
    s, producer, loop = loop
    run = uuid.uuid4().hex[:8]
    bad_ad = QueryEvent(
        query_id=f"poison.{run}.ad", user=UserProfile(user_id="u1", info="x", interests=["tea"]), query="tea?",
        candidates=[CandidateAd(ad_id="Ad-0000", title="No Such Ad", category="none", bid=50)],
    )
    producer.send(QUERIES, key=f"poison.{run}.json".encode(), value=b"{not json")
    producer.send(QUERIES, key=bad_ad.query_id.encode(), value=encode(bad_ad))
    producer.send(RESPONSES, key=f"poison.{run}.schema".encode(), value=b'{"query_id": "x", "text": 5}')
    n = replay(small_world, producer, ReplayConfig(split="test", limit=10, run_id=run, seed=4), progress=False)
    # the sink also reads (and stores) the schema-valid bad query before the responder rejects it
    loop.wait_drained(n + 2, extra_sink_events=1, timeout_s=90)
    dead = _read_topic(s, kafka_bootstrap, DEAD_LETTER, DeadLetter, lambda d: (d.key or "").startswith(f"poison.{run}."), 5)
    by_key = {d.key.split(".")[-1] + "@" + d.consumer: d for d in dead}
    assert "json@responder" in by_key and "not JSON" in by_key["json@responder"].error
    assert "ad@responder" in by_key and "unknown ad id Ad-0000" in by_key["ad@responder"].error
    assert "schema@user-sim" in by_key and "ResponseEvent" in by_key["schema@user-sim"].error
    # the sink reads the same topics and dead-letters the undecodable ones itself
    assert {"json@sink", "schema@sink"} <= set(by_key) and len(dead) == 5
    assert loop.responder.stats["produced"] == n  # nothing answered for the poison
    assert loop.responder.stats["dead_lettered"] == 2
    t = warehouse.totals(clickhouse_client)
    assert t["responses"] == n and t["click_events"] == loop.user_sim.stats["produced"]


def test_sink_crash_between_insert_and_commit_loses_nothing_and_counts_nothing_twice(kafka_bootstrap, clickhouse_client, small_world, text_encoder):
    s = _settings(kafka_bootstrap).model_copy(update={"sink_batch_size": 20})
    ensure_topics(s, kafka_bootstrap)
    producer = make_producer(s, kafka_bootstrap)
    stop = threading.Event()
    sim = make_user_simulator("embedding", seed=s.seed, encoder=text_encoder)
    responder = build.responder_service(s, kafka_bootstrap, producer, StoredAnswerBackend(), build.candidate_picker(s, text_encoder), stop)
    user_sim = build.user_sim_service(s, kafka_bootstrap, producer, sim, stop)
    run_in_threads([responder, user_sim])
    run = uuid.uuid4().hex[:8]
    n = replay(small_world, producer, ReplayConfig(split="test", limit=40, run_id=run, seed=5), progress=False)
    _wait(lambda: user_sim.stats["consumed"] >= n, 90, "click decisions")
    total_events = 2 * n + user_sim.stats["produced"]

    # First sink: dies on its second commit, after that batch was already inserted.
    sink1 = build.sink_service(s, kafka_bootstrap, producer, clickhouse_client, threading.Event())
    real_commit, calls = sink1.consumer.commit_async, []  # a batch's commit (the service does not wait for it)

    def crashing_commit(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("sink killed between insert and commit")
        return real_commit(*a, **kw)

    sink1.consumer.commit_async = crashing_commit
    with pytest.raises(RuntimeError, match="killed"):
        sink1.run()
    inserted_before_crash = warehouse.totals(clickhouse_client)
    assert 0 < inserted_before_crash["queries"] + inserted_before_crash["responses"] + inserted_before_crash["click_events"] < total_events

    # Second sink, same group: resumes from the last commit, re-inserting the uncommitted batch.
    sink2 = build.sink_service(s, kafka_bootstrap, producer, clickhouse_client, threading.Event())
    sink2.run(idle_timeout_s=8)
    assert sink2.stats["consumed"] >= total_events - 20  # at most one batch was committed before
    stop.set()
    producer.close()

    clicks = _read_topic(s, kafka_bootstrap, CLICKS, ClickEvent, lambda ev: f".{run}." in ev.query_id, user_sim.stats["produced"])
    t = warehouse.totals(clickhouse_client)
    assert (t["queries"], t["responses"], t["click_events"]) == (n, n, len(clicks))
    assert t["revenue"] == pytest.approx(sum(c.bid for c in clicks if c.clicked))
