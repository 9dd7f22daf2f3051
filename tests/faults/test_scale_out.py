"""Scale-out (issue 15, fault suite item 6): two instances of the responder and of the user simulator
in one consumer group share the partitions; mid-stream a second responder joins, the first
responder is killed (SIGKILL, not restarted) and one user simulator leaves (SIGTERM), each forcing
a rebalance; the totals still match exactly.

Each instance is an ``llm-auction serve`` process on the real broker, as the crash test runs them.
The sink is one process: two sinks need a ClickHouse server, because the embedded ClickHouse admits
one process per folder and two folders would be two warehouses (exactly-once accounting is per
table). The stream app's workers are not covered here.

Afterwards: every replayed query has one query row and one response row, the click rows are
exactly the click events on the topic (deduplicated by event id), revenue equals the clicked bids,
and the work was shared (from each instance's "service stopped" log line): the responder that
joined consumed some but not all queries, so the killed one answered the rest; both user
simulators consumed responses.
"""

from __future__ import annotations

import re
import threading
import time
import uuid

import pytest
from faults_support import Offsets, ServiceProcess, TopicWatcher, read_warehouse, report_counts, service_env

from llm_auction.infra.kafka import ensure_topics, make_producer
from llm_auction.producers.replay import ReplayConfig, replay
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import CLICKS, QUERIES, RESPONSES

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]  # 35-96 s (5 processes): outside the default suite (make test-all)

N_QUERIES = 1000
RATE_QPS = 60.0  # the replay lasts ~17 s
GROUPS = {"llma-responder": (QUERIES,), "llma-user-sim": (RESPONSES,), "llma-sink": (QUERIES, RESPONSES, CLICKS)}
ARGS = {"responder": ["--backend", "stored", "--candidates", "0"], "user-sim": ["--backend", "embedding"], "sink": []}


def _consumed(log_text: str) -> int | None:
    """What an instance consumed, from the line it logs when it stops (None: it never stopped cleanly)."""
    found = re.findall(r"service stopped service=\S+ consumed=(\d+)", log_text)
    return int(found[-1]) if found else None


def _wait_started(p: ServiceProcess, timeout_s: float = 120.0) -> None:
    """Until ``p`` logged that its service loop started (models loaded: MiniLM takes seconds)."""
    deadline = time.monotonic() + timeout_s
    while "service started" not in p.log.read_text(errors="replace"):
        assert p.alive(), f"{p.name} exited on its own:\n{p.tail()}"
        assert time.monotonic() < deadline, f"{p.name} did not start in {timeout_s:.0f} s:\n{p.tail()}"
        time.sleep(0.2)


def test_two_instances_per_service_share_partitions_and_a_kill_mid_stream_loses_nothing(kafka_bootstrap, small_world, tmp_path, record_property):
    run = uuid.uuid4().hex[:8]
    marker = f".{run}."
    settings = Settings(kafka_bootstrap=kafka_bootstrap, seed=11)
    ensure_topics(settings, kafka_bootstrap)
    ch_url = f"chdb://{tmp_path / 'clickhouse'}"
    env = service_env(kafka_bootstrap, tmp_path, seed=11, clickhouse_url=ch_url, sink_batch_size=500, sink_batch_max_wait_s=0.3, adllm_batch_size=16)
    env["LLMA_LOG_LEVEL"] = "INFO"  # the "service stopped" line with the instance's counts
    env["LLMA_LOG_FORMAT"] = "text"
    procs = {f"{name}-{i}": ServiceProcess(name, ARGS[name], env, tmp_path / f"{name}-{i}.log") for name in ("responder", "user-sim") for i in (1, 2)}
    procs["sink"] = ServiceProcess("sink", [], env, tmp_path / "sink.log")
    watcher = TopicWatcher(settings, kafka_bootstrap, marker)
    watcher.start()
    producer = make_producer(settings, kafka_bootstrap)
    halt = threading.Event()
    sent: list[int] = []
    events: list[str] = []
    offsets = Offsets(settings, kafka_bootstrap)
    t0 = time.monotonic()
    try:
        for name in ("responder-1", "user-sim-1", "user-sim-2", "sink"):  # responder-2 joins mid-stream
            procs[name].start()
        for name in ("responder-1", "user-sim-1", "user-sim-2", "sink"):
            _wait_started(procs[name])
        cfg = ReplayConfig(split="test", limit=N_QUERIES, rate=RATE_QPS, loop=True, run_id=run, seed=15)
        replayer = threading.Thread(target=lambda: sent.append(replay(small_world, producer, cfg, progress=False, stop=halt)), daemon=True)
        replayer.start()

        def worked(group: str) -> int:
            return offsets.total(group, GROUPS[group])

        def wait_work(group: str, above: int, what: str) -> None:
            deadline = time.monotonic() + 90
            while worked(group) <= above:
                for p in procs.values():
                    assert p.proc is None or p.alive() or p.kills, f"{p.name} exited on its own:\n{p.tail()}"
                assert time.monotonic() < deadline, f"no progress of {group} for 90 s ({what})"
                time.sleep(0.2)

        wait_work("llma-responder", 0, "first answers")
        procs["responder-2"].start()  # joins mid-stream: a rebalance of the responders' group
        _wait_started(procs["responder-2"])
        events.append("responder-2 joined")
        time.sleep(8.0)  # both responders hold partitions (a join waits half the 6 s session timeout)
        base = worked("llma-responder")
        wait_work("llma-responder", base, "answers after the join")
        procs["responder-1"].kill()  # mid-stream, not restarted: responder-2 takes its partitions
        assert procs["user-sim-2"].stop() == 0  # leaves mid-stream (finishes its batch, commits): user-sim-1 takes over
        events.append("responder-1 killed, user-sim-2 left")
        replayer.join(timeout=120)
        assert sent == [N_QUERIES]

        deadline = time.monotonic() + 180
        while True:
            ends, last_new, n_responses, _ = watcher.snapshot()
            caught = all(offsets.committed(g, t).get(tp, 0) >= end for g, t in GROUPS.items() for tp, end in ends.items() if tp[0] in t)
            if n_responses >= N_QUERIES and time.monotonic() - last_new > 2.0 and caught:
                break
            assert time.monotonic() < deadline, f"not drained: {n_responses} responses"
            time.sleep(0.5)
        codes = {n: p.stop() for n, p in procs.items() if p.alive()}
        assert set(codes.values()) == {0}, {n: procs[n].tail() for n, c in codes.items() if c}
    finally:
        halt.set()
        offsets.close()
        producer.close()
        for p in procs.values():
            if p.alive():
                p.proc.kill()
                p.proc.wait()
        seen = watcher.close()
    wall_s = time.monotonic() - t0

    stored = read_warehouse(ch_url, marker, env)
    topic_clicks = {eid: (int(c.clicked), c.bid) for eid, c in seen.clicks.items()}
    stored_clicks = {eid: (c, b) for eid, c, b in stored["click_rows"]}
    logs = {n: p.log.read_text(errors="replace") for n, p in procs.items()}
    consumed = {n: _consumed(logs[n]) for n in ("responder-2", "user-sim-1", "user-sim-2")}  # responder-1 was killed: no line
    losses = (N_QUERIES - stored["queries"]["query_ids"]) + (N_QUERIES - stored["responses"]["query_ids"]) + len(topic_clicks.keys() - stored_clicks.keys())
    duplicates = (
        (stored["queries"]["final_rows"] - stored["queries"]["query_ids"]) + (stored["responses"]["final_rows"] - stored["responses"]["query_ids"])
        + len(stored_clicks.keys() - topic_clicks.keys()) + sum(stored_clicks[e] != topic_clicks[e] for e in stored_clicks.keys() & topic_clicks.keys())
    )
    report_counts(
        record_property, instances=len(procs), joined_mid_stream=1, killed_mid_stream=1, left_mid_stream=1, messages_replayed=sent[0],
        **{f"consumed_by_{n}": c for n, c in consumed.items()},
        redelivered_on_topics=(seen.records[RESPONSES] - len(seen.responses)) + (seen.records[CLICKS] - len(seen.clicks)),
        duplicates_found=duplicates, losses=losses, revenue=stored["revenue"], wall_s=round(wall_s, 1),
    )
    # shared work: the joined responder answered some, not all (the killed one the rest); both user simulators worked
    assert consumed["responder-2"] is not None and 0 < consumed["responder-2"] < N_QUERIES, consumed
    assert consumed["user-sim-1"] and consumed["user-sim-2"], consumed
    # the accounting: one query and one answer per query, the emitted clicks exactly, revenue = clicked bids
    assert losses == 0 and duplicates == 0
    assert stored["queries"]["final_rows"] == stored["responses"]["final_rows"] == N_QUERIES
    assert len(seen.responses) == N_QUERIES and seen.differing == 0 and not seen.dead
    assert stored_clicks == topic_clicks
    assert stored["revenue"] == sum(b for c, b in topic_clicks.values() if c)
