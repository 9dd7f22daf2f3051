"""Broker outage (issue 15, fault suite item 3): the broker stops mid-stream and comes back on the
same port; the services ride it out and resume, and nothing already in ClickHouse is lost or doubled.

The broker is a local Tansu of the test's own (it is stopped: the session's broker is shared), the
responder, user simulator and sink run on threads as ``llm-auction demo`` runs them, over the real
embedded ClickHouse. Tansu keeps everything in memory, so the restarted broker is empty: the test
re-creates the topics as an operator would (``llm-auction topics create``). Three replays:

A. before the outage, drained: its rows are the reference, and must be there unchanged at the end;
B. mid-stream: acknowledged by the broker, then the broker stops while the services work on it.
   What had not reached ClickHouse is gone with the broker's memory (a real Kafka keeps its log
   on disk, docs/operations.md); what reached it stays, counted once;
C. after the restart: the services answer, click and store every query exactly once, and revenue
   equals the clicked bids on the new broker's clicks topic.

While the broker is down the services retry (an unreachable broker is an infrastructure fault,
never a poison message): no service stops, nothing is dead-lettered. Then, as an operator restarts
the memory broker's dependants with it, the services are stopped while it is down and started again
after it: a service that lived across the restart would carry state of the lost log (measured: an
idempotent producer that was sending fails every later send with OutOfOrderSequenceNumber, then
InitProducerId UnknownError; a graceful stop commits offsets of the old log into the new one, so
the next instance skips that many records). A real Kafka keeps the log, the offsets and the
producer state on disk, so its clients ride a restart (docs/operations.md).
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from faults_support import SlowStoredBackend, report_counts

from llm_auction.consumers import build
from llm_auction.infra.broker import LocalBroker
from llm_auction.infra.kafka import ensure_topics, make_producer, open_reader
from llm_auction.models.stored_backend import StoredAnswerBackend
from llm_auction.models.user_sim import make_user_simulator
from llm_auction.producers.replay import ReplayConfig, replay
from llm_auction.schemas import ClickEvent, DeadLetter, decode
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import CLICKS, DEAD_LETTER

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]  # ~75 s: outside the default suite (make test-all)

DELIVERY_TIMEOUT_MS = 6_000  # at least linger + request timeout (5 s here)
DOWN_S = 4.0  # the outage; well below LLMA_SERVICE_FAULT_TIMEOUT_S (120 s), so no service gives up


def _rows(client, run: str) -> dict:
    """This run's rows in ClickHouse: deduplicated (FINAL) and as stored."""
    out = {}
    for t in ("queries", "responses", "clicks"):
        r = client.query(f"SELECT count(), uniqExact(query_id), uniqExact(event_id) FROM llm_auction.{t} FINAL WHERE position(query_id, {{m:String}}) > 0", parameters={"m": f".{run}."}).result_rows[0]
        out[t] = {"rows": int(r[0]), "query_ids": int(r[1]), "event_ids": int(r[2])}
    rev = client.query("SELECT sum(bid * clicked), sum(clicked) FROM llm_auction.clicks FINAL WHERE position(query_id, {m:String}) > 0", parameters={"m": f".{run}."}).result_rows[0]
    out["revenue"], out["clicked"] = int(rev[0] or 0), int(rev[1] or 0)
    return out


def _topic(settings, bootstrap: str, topic: str, model, run: str) -> list:
    """Every event of ``run`` on ``topic`` of the broker as it is now, read from the start."""
    c = open_reader(settings, bootstrap, [topic])
    try:
        out, quiet = [], time.monotonic()
        while time.monotonic() - quiet < 1.5:
            polled = c.poll(timeout_ms=200)
            for recs in polled.values():
                quiet = time.monotonic()
                out += [decode(r.value, model) for r in recs if f".{run}.".encode() in (r.key or b"") or (model is DeadLetter and f".{run}.".encode() in r.value)]
        return out
    finally:
        c.close()


def _wait(cond, timeout_s: float, what: str, alive) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


def test_the_loop_rides_out_a_broker_restart_and_loses_nothing_it_stored(small_world, clickhouse_client, text_encoder, record_property):
    runs = {k: uuid.uuid4().hex[:8] for k in "ABC"}
    broker = LocalBroker().start()
    port = broker.port
    s = Settings(kafka_bootstrap=broker.bootstrap, candidates_k=None, sink_batch_max_wait_s=0.2, kafka_request_timeout_ms=5000)
    bootstrap = broker.bootstrap
    ensure_topics(s, bootstrap)
    # A service's stop waits for its producer's pending sends, sent up to 3 times; while the broker is
    # down each attempt ends only at the delivery timeout (kafka-python's default: 120 s, so a stop
    # could take 6 minutes; measured: 2 minutes for one attempt, 45 s for three at 15 s).
    producer = make_producer(s, bootstrap, delivery_timeout_ms=DELIVERY_TIMEOUT_MS)
    sim = make_user_simulator("embedding", seed=s.seed, encoder=text_encoder)
    # B is mid-stream when the broker stops: the responder answers ~100 queries/s, the replay is faster
    loop = build.local_loop(s, bootstrap, producer, SlowStoredBackend(0.01), sim, clickhouse_client).start()

    def alive() -> None:
        dead = [t.name for t in loop.threads if not t.is_alive()]
        assert not dead, f"service thread(s) stopped: {dead}"

    counts: dict = {}
    try:
        # A: before the outage, drained
        n_a = replay(small_world, producer, ReplayConfig(split="test", limit=120, loop=True, run_id=runs["A"], seed=1), progress=False)
        loop.wait_drained(n_a, timeout_s=90)
        before = _rows(clickhouse_client, runs["A"])
        assert before["queries"]["rows"] == before["responses"]["rows"] == n_a

        # B: acknowledged, then the broker stops while the services work on it
        n_b = replay(small_world, producer, ReplayConfig(split="test", limit=400, loop=True, run_id=runs["B"], seed=2), progress=False)
        os.kill(broker.pid, signal.SIGKILL)  # a crash: no graceful shutdown, in-flight requests cut
        broker.stop()  # reaps it, removes its log folder
        t_down = time.monotonic()
        time.sleep(DOWN_S / 2)
        alive()  # no service gave up: the broker's absence is retried, not dead-lettered
        # The operator (compose) restarts the services with the broker, and stops them while it is
        # down: a service living across a memory broker's restart would keep its idempotent
        # producer and its offsets, both of which refer to the lost log (docs/operations.md).
        t_stop = time.monotonic()
        loop.close(timeout_s=3 * DELIVERY_TIMEOUT_MS / 1000 + 15)
        stop_s = time.monotonic() - t_stop
        stuck = [t.name for t in loop.threads if t.is_alive()]
        assert not stuck, f"services that did not stop while the broker was down: {stuck}"
        producer.close()
        time.sleep(DOWN_S / 2)
        broker = LocalBroker(port=port).start()  # same address
        ensure_topics(s, bootstrap)  # memory-only: the topics are gone with the old process
        down_s = time.monotonic() - t_down
        producer = make_producer(s, bootstrap, delivery_timeout_ms=DELIVERY_TIMEOUT_MS)
        loop = build.local_loop(s, bootstrap, producer, StoredAnswerBackend(), sim, clickhouse_client).start()

        # C: after the restart
        n_c = replay(small_world, producer, ReplayConfig(split="test", limit=200, loop=True, run_id=runs["C"], seed=3), progress=False)
        _wait(lambda: _rows(clickhouse_client, runs["C"])["responses"]["rows"] >= n_c, 120, "run C answered and stored", alive)
        clicks_c = {c.event_id: c for c in _topic(s, bootstrap, CLICKS, ClickEvent, runs["C"])}
        _wait(lambda: _rows(clickhouse_client, runs["C"])["clicks"]["rows"] >= len(clicks_c), 60, "run C's clicks stored", alive)
        time.sleep(1.0)  # a late duplicate would land now
        after_a, rows_b, rows_c = (_rows(clickhouse_client, runs[k]) for k in "ABC")
        dead = _topic(s, bootstrap, DEAD_LETTER, DeadLetter, runs["C"])
        alive()
    finally:
        loop.close()
        producer.close()
        broker.stop()

    counts = {
        "outage_s": round(down_s, 1), "services_stop_s": round(stop_s, 1), "A_queries": n_a, "B_acknowledged": n_b, "B_queries_stored": rows_b["queries"]["rows"],
        "B_answered_and_stored": rows_b["responses"]["rows"], "B_lost_with_broker_memory": n_b - rows_b["responses"]["rows"], "C_queries": n_c, "C_stored": rows_c["queries"]["rows"],
        "C_clicks": len(clicks_c), "duplicates": 0, "dead_letters": len(dead),
    }
    # A: what ClickHouse held before the outage is there, unchanged and not doubled
    assert after_a == before, (before, after_a)
    # B: whatever of it reached ClickHouse is counted once (one response per query at most)
    for t in ("queries", "responses", "clicks"):
        assert rows_b[t]["rows"] == rows_b[t]["event_ids"], rows_b
    assert rows_b["responses"]["rows"] == rows_b["responses"]["query_ids"] <= rows_b["queries"]["rows"] <= n_b
    # C: every query after the restart answered, clicked and billed exactly once
    assert rows_c["queries"]["rows"] == rows_c["responses"]["rows"] == rows_c["responses"]["query_ids"] == n_c
    assert rows_c["clicks"]["rows"] == rows_c["clicks"]["event_ids"] == len(clicks_c) == n_c  # one ad per stored answer
    assert rows_c["revenue"] == sum(c.bid for c in clicks_c.values() if c.clicked)
    assert dead == []
    report_counts(record_property, **counts)
