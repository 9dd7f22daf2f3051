"""Back-pressure (issue 15, fault suite item 7): a responder slower than the replay falls behind,
``llm-auction monitor`` reports its lag while it is behind and 0 once it drained, and nothing is
dropped: Kafka holds the backlog, the service reads it at its own pace, and every query is answered.

The responder is the real service (``consumers.build.responder_service``, its group, its commits)
over the stored-answer backend slowed by a fixed delay per query, on a broker of its own (a fresh
local Tansu), so the group's offsets start empty whatever other tests left on the session broker.
The monitor runs as the CLI does, in a process of its own, with an empty embedded ClickHouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from faults_support import SlowStoredBackend, report_counts

from llm_auction.consumers import build
from llm_auction.consumers.service import run_in_threads
from llm_auction.infra.broker import LocalBroker
from llm_auction.infra.kafka import ensure_topics, make_producer, open_reader
from llm_auction.infra.lag import LagReader
from llm_auction.producers.replay import ReplayConfig, replay
from llm_auction.schemas import ResponseEvent, decode
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import DEAD_LETTER, QUERIES, RESPONSES

pytestmark = [pytest.mark.faults, pytest.mark.integration]

N_QUERIES = 300
RATE_QPS = 100.0  # the replay offers 100 queries/s ...
DELAY_S = 0.03  # ... and the responder answers at most ~33/s
GROUP = "llma-responder"


def _monitor_lag(bootstrap: str, tmp_path) -> dict[tuple[str, str], int]:
    """``llm-auction monitor --once --json`` in its own process; its lag rows as (group, topic) -> lag."""
    env = dict(os.environ, LLMA_KAFKA_BOOTSTRAP=bootstrap, LLMA_CLICKHOUSE_URL=f"chdb://{tmp_path / 'monitor-clickhouse'}", LLMA_LOG_LEVEL="WARNING")
    done = subprocess.run([sys.executable, "-m", "llm_auction.cli", "monitor", "--once", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    snap = json.loads(done.stdout)
    assert snap["lag"] is not None, snap.get("lag_error")
    return {(r["group"], r["topic"]): r["lag"] for r in snap["lag"]}


def _responses(settings, bootstrap: str, run: str) -> tuple[list[str], int]:
    """The query ids answered on the responses topic (copies included) and the dead letters, read from the start."""
    c = open_reader(settings, bootstrap, (RESPONSES, DEAD_LETTER))
    try:
        answered, dead = [], 0
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 1.5:
            polled = c.poll(timeout_ms=200)
            for recs in polled.values():
                quiet_since = time.monotonic()
                for r in recs:
                    if r.topic == RESPONSES:
                        ev = decode(r.value, ResponseEvent)
                        if run in ev.query_id:
                            answered.append(ev.query_id)
                    else:
                        dead += 1
        return answered, dead
    finally:
        c.close()


def test_a_slow_responder_shows_growing_lag_then_zero_and_drops_nothing(small_world, tmp_path, record_property):
    run = uuid.uuid4().hex[:8]
    with LocalBroker() as broker:
        bootstrap = broker.bootstrap
        s = Settings(kafka_bootstrap=bootstrap, adllm_batch_size=4, candidates_k=None)
        ensure_topics(s, bootstrap)
        producer = make_producer(s, bootstrap)
        stop = threading.Event()
        responder = build.responder_service(s, bootstrap, producer, SlowStoredBackend(DELAY_S), None, stop)
        threads = run_in_threads([responder])
        reader = LagReader(s, bootstrap)
        sent: list[int] = []
        try:
            replayer = threading.Thread(target=lambda: sent.append(replay(small_world, producer, ReplayConfig(split="test", limit=N_QUERIES, rate=RATE_QPS, loop=True, run_id=run, seed=3), progress=False)), daemon=True)
            replayer.start()
            during: list[int] = []  # the responder's lag, sampled while the replay runs
            while replayer.is_alive():
                during += [sum(r.lag for r in reader.lag({GROUP: [QUERIES]}))]
                time.sleep(0.5)
            replayer.join()
            assert sent == [N_QUERIES]
            behind = _monitor_lag(bootstrap, tmp_path)[(GROUP, QUERIES)]
            answered_then = responder.stats["produced"]

            deadline = time.monotonic() + 90
            while responder.stats["produced"] < N_QUERIES:
                assert all(t.is_alive() for t in threads), "the responder stopped"
                assert time.monotonic() < deadline, f"the responder answered {responder.stats['produced']} of {N_QUERIES} in 90 s"
                time.sleep(0.2)
            while sum(r.lag for r in reader.lag({GROUP: [QUERIES]})) > 0:  # its last commit follows its last answer
                assert time.monotonic() < deadline, "the responder never committed its last batch"
                time.sleep(0.2)
            after = _monitor_lag(bootstrap, tmp_path)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
            reader.close()
            producer.close()
        answered, dead = _responses(s, bootstrap, run)

    report_counts(record_property, queries=N_QUERIES, max_lag_during_replay=max(during), lag_reported_behind=behind, lag_reported_after=after[(GROUP, QUERIES)], answered=len(set(answered)), dropped=N_QUERIES - len(set(answered)), dead_letters=dead)
    # While the replay ran, the lag grew: the backlog is in Kafka, not in the service.
    assert max(during) >= 50 and during.index(max(during)) > 0 and max(during) > during[0], during
    # The monitor, a separate process, saw the responder behind (it had not answered everything) ...
    assert answered_then < N_QUERIES and behind > 0, (answered_then, behind)
    assert behind >= N_QUERIES - answered_then - 2 * s.adllm_batch_size  # at least what was unanswered, less a batch in hand
    # ... and 0 once it drained; the other groups on the broker are this test's readers: none is a service.
    assert after[(GROUP, QUERIES)] == 0, after
    # Nothing dropped: every query answered exactly once (no crash, so no redelivery), nothing dead-lettered.
    assert sorted(answered) == sorted(set(answered)) and len(answered) == N_QUERIES
    assert dead == 0
