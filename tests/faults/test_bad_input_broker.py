"""Bad input on the real broker (issue 15, fault suite item 4): a batch of fuzzed records (the
strategies of ``fuzz_inputs``: broken fields, random bytes and JSON, an empty value and a
tombstone) goes onto the input topics of a running responder, user simulator and sink (real
consumers and producers, real handlers, embedded ClickHouse), followed by one valid event per
topic. Every bad record is dead-lettered exactly once by every service that reads it, with a
reason; the valid events behind them are processed; no service stopped."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
from faults_support import report_counts
from fuzz_inputs import base_click, base_query, base_response, broken_event, garbage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_auction.consumers.responder import ResponderHandler
from llm_auction.consumers.routing import PolicyRouter
from llm_auction.consumers.service import ServiceConfig, StreamService, run_in_threads
from llm_auction.consumers.sink import SinkHandler
from llm_auction.consumers.user_sim import UserSimHandler
from llm_auction.infra import warehouse
from llm_auction.infra.kafka import ensure_topics, make_consumer, make_producer, open_reader
from llm_auction.models.stored_backend import StoredAnswerBackend
from llm_auction.models.user_sim import make_user_simulator
from llm_auction.schemas import ClickEvent, DeadLetter, QueryEvent, ResponseEvent, decode, encode
from llm_auction.schemas.catalog import load_catalog
from llm_auction.schemas.topics import DEAD_LETTER

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _draw(strategy, n: int) -> list:
    """``n`` examples of ``strategy``, the same on every run (hypothesis, derandomized)."""
    out: list = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(x):
        out.append(x)

    collect()
    return out[:n]


def _read_dead_letters(settings_, bootstrap, sources: set[str], expect: int, timeout_s: float = 60.0) -> list[DeadLetter]:
    """Every dead letter from ``sources`` on the dead-letter topic, read from the beginning; waits
    for ``expect`` of them, then 2 s more for any extra copy."""
    consumer = open_reader(settings_, bootstrap, [DEAD_LETTER])
    out: list[DeadLetter] = []
    try:
        deadline, quiet_until = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=300).values():  # max_records unset: a one-partition topic (docs/kafka.md)
                for r in recs:
                    d = decode(r.value, DeadLetter)
                    if d.source_topic in sources:
                        out.append(d)
            if len(out) >= expect and quiet_until is None:
                quiet_until = time.monotonic() + 2.0
            if quiet_until is not None and time.monotonic() > quiet_until:
                break
    finally:
        consumer.close()
    return out


def test_fuzzed_records_on_the_broker_are_dead_lettered_once_and_the_services_keep_running(
        kafka_settings, kafka_bootstrap, fresh_topic, fresh_group, clickhouse_client, text_encoder, record_property):
    s, b = kafka_settings, kafka_bootstrap
    # The services write to the project's topics (responses, clicks, dead letters): create them with
    # their partition counts first, or a first produce auto-creates them with the broker's default.
    ensure_topics(s, b)
    q_topic, r_topic, c_topic = fresh_topic("fuzz-queries"), fresh_topic("fuzz-responses"), fresh_topic("fuzz-clicks")
    topic_of = {QueryEvent: q_topic, ResponseEvent: r_topic, ClickEvent: c_topic}
    run = uuid.uuid4().hex[:8]

    # the batch: broken events on their model's topic, garbage on every topic, then one valid event per topic
    bad: list[tuple[str, bytes | None]] = [(topic_of[m], payload) for m, _, payload in _draw(broken_event(), 45)]
    bad += [(t, payload) for t, payload in _draw(st.tuples(st.sampled_from([q_topic, r_topic, c_topic]), garbage), 30)]
    bad += [(q_topic, b""), (r_topic, None), (c_topic, b"null"), (q_topic, b'{"query_id": "' + b"\xff\xfe" * 20_000 + b'"}')]
    q = base_query(query_id=f"fuzz.{run}.valid")
    good = [(q_topic, encode(q)), (r_topic, encode(base_response(q))), (c_topic, encode(base_click(query_id=q.query_id)))]

    producer = make_producer(s, b)
    stop = threading.Event()
    catalog = load_catalog()

    def service(name, topics, handler):
        group = fresh_group(name)
        config = ServiceConfig(name, group, topics, batch_size=16, batch_max_wait_s=0.1)
        return StreamService(config, handler, make_consumer(s, b, group, list(topics), max_poll_records=16), producer, stop)

    services = {
        "responder": service("responder", {q_topic: QueryEvent}, ResponderHandler(StoredAnswerBackend(), catalog, PolicyRouter("base"))),
        "user-sim": service("user-sim", {r_topic: ResponseEvent}, UserSimHandler(make_user_simulator("embedding", seed=3, encoder=text_encoder))),
        "sink": service("sink", {q_topic: QueryEvent, r_topic: ResponseEvent, c_topic: ClickEvent}, SinkHandler(clickhouse_client)),
    }
    threads = run_in_threads(list(services.values()))
    try:
        where: dict[tuple[str, int, int], bytes | None] = {}  # (topic, partition, offset) of each bad record
        for i, (topic, value) in enumerate(bad):
            md = producer.send(topic, key=f"fuzz.{run}.{i}".encode(), value=value).get(timeout=30)
            where[(topic, md.partition, md.offset)] = value
        for topic, value in good:
            producer.send(topic, key=q.query_id.encode(), value=value).get(timeout=30)
        per_topic = Counter(t for t, _ in bad + good)
        expect = {name: sum(per_topic[t] for t in svc.config.topics) for name, svc in services.items()}
        deadline = time.monotonic() + 90
        while any(svc.stats["consumed"] < expect[name] for name, svc in services.items()):
            assert time.monotonic() < deadline, {name: dict(svc.stats) for name, svc in services.items()}
            assert all(t.is_alive() for t in threads), "a service stopped"
            time.sleep(0.2)
        running = sum(t.is_alive() for t in threads)
        assert running == len(threads), "a service stopped"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        producer.close()

    readers = {name: set(svc.config.topics) for name, svc in services.items()}
    expected = Counter({(name, *k): 1 for name, topics in readers.items() for k in where if k[0] in topics})
    dead = _read_dead_letters(s, b, {q_topic, r_topic, c_topic}, sum(expected.values()))
    got = Counter((d.consumer, d.source_topic, d.partition, d.offset) for d in dead)
    assert got == expected, {"missing": list((expected - got).items())[:5], "extra": list((got - expected).items())[:5]}
    assert all(d.error.strip() and d.key.startswith(f"fuzz.{run}.") for d in dead)
    for name, svc in services.items():
        assert svc.stats["dead_lettered"] == sum(1 for k in where if k[0] in readers[name])
    # the valid events behind the bad ones went through: answered, clicked, stored
    assert services["responder"].stats["produced"] == 1 and services["user-sim"].stats["produced"] == 1
    t = warehouse.totals(clickhouse_client)
    assert (t["queries"], t["responses"], t["click_events"]) == (1, 1, 1)
    report_counts(
        record_property, bad_records_sent=len(bad), dead_letters=len(dead), dead_lettered_twice=sum(c - 1 for c in got.values() if c > 1),
        not_dead_lettered=sum((expected - got).values()), services_running_after=running,
    )
