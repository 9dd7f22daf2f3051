"""Crash and restart (issue 15, fault suite item 1): the responder (stored answers), the user
simulator (the embedding click model, real MiniLM) and the sink (embedded ClickHouse) each run as
its own ``llm-auction serve`` process on the real broker, while a paced replay sends several
thousand queries. Each service is killed with SIGKILL at seeded random points, always while it is
working (after its group committed something since it last started, plus a seeded delay), and is
restarted at once. Afterwards the warehouse holds exactly one query row and one response per
replayed query, exactly the clicks the simulator emitted (the clicks topic read from the
beginning, deduplicated by event id), and revenue equals the sum of the clicked bids.

chdb admits one process per folder: the sink process owns the folder while it runs, and the
warehouse is read by another process once the last sink has stopped.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest
from faults_support import Offsets, ServiceProcess, TopicWatcher, read_warehouse, report_counts, service_env

from llm_auction.infra.kafka import ensure_topics, make_producer
from llm_auction.producers.replay import ReplayConfig, replay
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import CLICKS, QUERIES, RESPONSES

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 15
N_QUERIES = 3000
RATE_QPS = 80.0  # the replay lasts ~37 s: every planned crash hits a service with work to do
KILLS = {"responder": 3, "user-sim": 2, "sink": 3}
ARGS = {
    "responder": ["--backend", "stored", "--candidates", "0"],  # all 100 candidates: no retrieval model to load
    "user-sim": ["--backend", "embedding"],
    "sink": [],
}
GROUPS = {  # the group each `serve` joins and the topics it commits
    "responder": ("llma-responder", (QUERIES,)),
    "user-sim": ("llma-user-sim", (RESPONSES,)),
    "sink": ("llma-sink", (QUERIES, RESPONSES, CLICKS)),
}


def _crash_loop(svc: ServiceProcess, delays: list[float], settings, bootstrap: str, crashes: list, errors: list, halt: threading.Event) -> None:
    """Kill ``svc`` once per delay: when its group has committed since it (re)started, after the
    delay; restart it at once. Ends early when ``halt`` is set (the test failed elsewhere)."""
    group, topics = GROUPS[svc.name]
    offsets = Offsets(settings, bootstrap)
    try:
        for delay in delays:
            base = offsets.total(group, topics)
            deadline = time.monotonic() + 120
            while offsets.total(group, topics) <= base:
                if halt.is_set():
                    return
                if not svc.alive():
                    raise AssertionError(f"{svc.name} exited on its own ({svc.proc.returncode}):\n{svc.tail()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{svc.name} committed nothing for 120 s after its start {svc.starts}:\n{svc.tail()}")
                time.sleep(0.1)
            if halt.wait(delay):
                return
            svc.kill()
            crashes.append((svc.name, round(time.monotonic(), 2)))
            svc.start()
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)
    finally:
        offsets.close()


def _caught_up(offsets: Offsets, ends: dict) -> bool:
    """Every group has committed past every record the watcher saw on the topics it reads."""
    for group, topics in GROUPS.values():
        committed = offsets.committed(group, topics)
        if any(committed.get(tp, 0) < end for tp, end in ends.items() if tp[0] in topics):
            return False
    return True


def test_services_killed_at_random_points_lose_nothing_and_count_nothing_twice(kafka_bootstrap, small_world, tmp_path, record_property):
    run = uuid.uuid4().hex[:8]
    marker = f".{run}."
    settings = Settings(kafka_bootstrap=kafka_bootstrap, seed=11)
    ensure_topics(settings, kafka_bootstrap)
    ch_url = f"chdb://{tmp_path / 'clickhouse'}"
    env = service_env(kafka_bootstrap, tmp_path, seed=11, clickhouse_url=ch_url, sink_batch_size=500, sink_batch_max_wait_s=0.3, adllm_batch_size=16)
    services = {name: ServiceProcess(name, args, env, tmp_path / f"{name}.log") for name, args in ARGS.items()}
    rng = random.Random(SEED)
    plan = {name: [round(rng.uniform(0.0, 1.0), 2) for _ in range(k)] for name, k in KILLS.items()}

    watcher = TopicWatcher(settings, kafka_bootstrap, marker)
    watcher.start()
    crashes: list = []
    errors: list = []
    halt = threading.Event()
    threads: list[threading.Thread] = []  # the replay and one crash loop per service
    sent: list[int] = []
    producer = make_producer(settings, kafka_bootstrap)
    t0 = time.monotonic()
    try:
        for svc in services.values():
            svc.start()
        cfg = ReplayConfig(split="test", limit=N_QUERIES, rate=RATE_QPS, loop=True, run_id=run, seed=SEED)
        replayer = threading.Thread(target=lambda: sent.append(replay(small_world, producer, cfg, progress=False, stop=halt)), name="replay", daemon=True)
        chaos = [threading.Thread(target=_crash_loop, args=(services[n], plan[n], settings, kafka_bootstrap, crashes, errors, halt), name=f"crash-{n}", daemon=True) for n in plan]
        threads += [replayer, *chaos]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not errors, errors[0]
        crash_phase_s = time.monotonic() - t0

        # Drain: every group committed past everything on its topics, and nothing new for 2 s.
        offsets = Offsets(settings, kafka_bootstrap)
        try:
            deadline = time.monotonic() + 180
            while True:
                for svc in services.values():
                    assert svc.alive(), f"{svc.name} exited on its own ({svc.proc.returncode}):\n{svc.tail()}"
                ends, last_new, n_responses, n_clicks = watcher.snapshot()
                if n_responses >= N_QUERIES and time.monotonic() - last_new > 2.0 and _caught_up(offsets, ends):
                    break
                assert time.monotonic() < deadline, f"not drained: {n_responses} responses, {n_clicks} clicks seen"
                time.sleep(0.5)
        finally:
            offsets.close()
        codes = {name: svc.stop() for name, svc in services.items()}
        assert codes == {name: 0 for name in services}, {n: services[n].tail() for n, c in codes.items() if c}
    finally:
        halt.set()  # on a failure: no more crashes or restarts, and the replay stops
        for t in threads:
            if t.ident is not None:
                t.join(timeout=60)
        producer.close()
        for svc in services.values():
            if svc.alive():
                svc.proc.kill()
                svc.proc.wait()
        seen = watcher.close()
    wall_s = time.monotonic() - t0

    stored = read_warehouse(ch_url, marker, env)
    topic_clicks = {eid: (int(c.clicked), c.bid) for eid, c in seen.clicks.items()}
    stored_clicks = {eid: (clicked, bid) for eid, clicked, bid in stored["click_rows"]}
    replayed = sent[0]
    exposures = sum(r.n_ads for r in seen.responses.values())
    answered = {r.query_id for r in seen.responses.values()}
    losses = (
        (replayed - stored["queries"]["query_ids"])
        + (replayed - stored["responses"]["query_ids"])
        + len(topic_clicks.keys() - stored_clicks.keys())
    )
    duplicates = (
        (stored["queries"]["final_rows"] - stored["queries"]["query_ids"])
        + (stored["responses"]["final_rows"] - stored["responses"]["query_ids"])
        + (stored["clicks"]["final_rows"] - len(stored_clicks))
        + len(stored_clicks.keys() - topic_clicks.keys())
        + sum(stored_clicks[e] != topic_clicks[e] for e in stored_clicks.keys() & topic_clicks.keys())
    )
    expected_revenue = sum(bid for clicked, bid in topic_clicks.values() if clicked)
    report_counts(
        record_property,
        crashes_injected=len(crashes), **{f"kills_{n}": services[n].kills for n in services},
        messages_replayed=replayed, duplicates_found=duplicates, losses=losses,
        redelivered_on_topics=(seen.records[RESPONSES] - len(seen.responses)) + (seen.records[CLICKS] - len(seen.clicks)),
        redelivered_rows_absorbed=sum(stored[t]["stored_rows"] - stored[t]["final_rows"] for t in ("queries", "responses", "clicks")),
        click_probability_recomputed=seen.probability_redrawn, click_probability_max_drift=f"{seen.probability_drift:.1e}",
        clicks=sum(c for c, _ in topic_clicks.values()), revenue=stored["revenue"], crash_phase_s=round(crash_phase_s, 1), wall_s=round(wall_s, 1),
    )

    assert len(crashes) == sum(KILLS.values())
    assert replayed == N_QUERIES and len(seen.queries) == N_QUERIES
    # the topics: one answer per query, one decision per exposed ad; a redelivery repeats its event exactly
    assert len(seen.responses) == N_QUERIES and answered == seen.queries
    assert len(topic_clicks) == exposures
    assert seen.differing == 0, seen.differences
    assert seen.probability_drift < 1e-6  # float32 rounding, not a different draw
    assert not seen.dead, seen.dead[:3]
    # the warehouse: exactly those, once each
    assert duplicates == 0 and losses == 0
    assert stored["queries"]["final_rows"] == stored["responses"]["final_rows"] == N_QUERIES
    assert stored_clicks == topic_clicks
    assert stored["revenue"] == expected_revenue
    assert 0 < sum(c for c, _ in topic_clicks.values()) < len(topic_clicks)  # revenue is not vacuous
