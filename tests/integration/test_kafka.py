"""Kafka infrastructure against a real broker: topics, keyed produce, group consume, commit, resume.

Completion is decided by counting what was consumed, never by ``end_offsets`` (Tansu's
ListOffsets(latest) can be short for batched writes).
"""

from __future__ import annotations

import time
import uuid

import pytest

from llm_auction.infra.kafka import admin_client, ensure_topics, make_consumer, make_producer, topic_partitions
from llm_auction.schemas.topics import DAY_MS, TOPICS, TopicSpec

pytestmark = pytest.mark.integration


def _consume(consumer, n: int, timeout_s: float = 30.0) -> list:
    """Poll until ``n`` records arrived (or the timeout), then keep polling 1 s more so a duplicate
    or an extra record would show up too."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(records)
    settle = time.monotonic() + 1.0
    while time.monotonic() < settle:
        for records in consumer.poll(timeout_ms=200).values():
            got.extend(records)
    return got


def test_ensure_topics_creates_all_with_their_partition_counts_and_is_idempotent(kafka_settings, kafka_bootstrap):
    first = ensure_topics(kafka_settings, kafka_bootstrap)
    assert set(first) <= set(TOPICS)  # another test may have created some already
    assert ensure_topics(kafka_settings, kafka_bootstrap) == []
    parts = topic_partitions(kafka_settings, kafka_bootstrap, list(TOPICS))
    assert parts == {name: spec.partitions for name, spec in TOPICS.items()}
    assert parts["auction.queries"] == 6 and parts["auction.rollout"] == 1


def test_ensure_topics_on_new_specs_returns_what_it_created(kafka_settings, kafka_bootstrap):
    a, b = f"test.spec-a.{uuid.uuid4().hex[:10]}", f"test.spec-b.{uuid.uuid4().hex[:10]}"
    specs = [TopicSpec(a, 4, DAY_MS), TopicSpec(b, 1, -1, compacted=True)]
    assert sorted(ensure_topics(kafka_settings, kafka_bootstrap, specs)) == sorted([a, b])
    assert ensure_topics(kafka_settings, kafka_bootstrap, specs) == []
    assert topic_partitions(kafka_settings, kafka_bootstrap, [a, b]) == {a: 4, b: 1}
    admin = admin_client(kafka_settings, kafka_bootstrap)
    try:
        assert {a, b} <= set(admin.list_topics())
        admin.delete_topics([a, b])
    finally:
        admin.close()


def test_keyed_messages_consumed_exactly_once_across_a_group_restart(kafka_settings, kafka_bootstrap, fresh_topic, fresh_group):
    topic = fresh_topic("resume", partitions=3)
    group = fresh_group("resume")
    keys = [f"q{i}" for i in range(10)]
    producer = make_producer(kafka_settings, kafka_bootstrap)
    try:
        first = [(keys[i % 10], f"a{i}".encode()) for i in range(40)]
        metas = [producer.send(topic, key=k, value=v) for k, v in first]
        producer.flush()
        partition_of: dict[str, set[int]] = {}
        for (k, _), fut in zip(first, metas):
            partition_of.setdefault(k, set()).add(fut.get(timeout=10).partition)
        # Same key -> same partition (what the impressions join relies on), and keys spread out.
        assert all(len(p) == 1 for p in partition_of.values())
        assert len({next(iter(p)) for p in partition_of.values()}) > 1

        c1 = make_consumer(kafka_settings, kafka_bootstrap, group, [topic])
        got1 = _consume(c1, len(first))
        c1.commit()
        c1.close()
        assert sorted(r.value for r in got1) == sorted(v for _, v in first)
        for r in got1:
            assert isinstance(r.key, bytes) and isinstance(r.value, bytes)
            assert {r.partition} == partition_of[r.key.decode()]

        second = [(keys[i % 10], f"b{i}".encode()) for i in range(25)]
        for k, v in second:
            producer.send(topic, key=k, value=v)
        producer.flush()
    finally:
        producer.close()

    c2 = make_consumer(kafka_settings, kafka_bootstrap, group, [topic])
    try:
        got2 = _consume(c2, len(second))
        c2.commit()
    finally:
        c2.close()
    # Resumed from the committed offsets: only the new messages, each once.
    assert sorted(r.value for r in got2) == sorted(v for _, v in second)
    for r in got2:
        assert {r.partition} == partition_of[r.key.decode()]


def test_producer_sends_bytes_keys_and_none_keys_as_given(kafka_settings, kafka_bootstrap, fresh_topic, fresh_group):
    topic = fresh_topic("keys", partitions=1)
    producer = make_producer(kafka_settings, kafka_bootstrap)
    try:
        producer.send(topic, key=b"raw", value=b"1")
        producer.send(topic, key="text-\u00e9", value=b"2")
        producer.send(topic, key=None, value=b"3")
        producer.flush()
    finally:
        producer.close()
    consumer = make_consumer(kafka_settings, kafka_bootstrap, fresh_group("keys"), topic)
    try:
        got = _consume(consumer, 3)
    finally:
        consumer.close()
    assert [(r.key, r.value) for r in sorted(got, key=lambda r: r.offset)] == [(b"raw", b"1"), ("text-\u00e9".encode(), b"2"), (None, b"3")]
