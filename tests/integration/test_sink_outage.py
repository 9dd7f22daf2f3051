"""A warehouse outage on real parts: the sink reads a real broker and writes a real ClickHouse
through a client that refuses for a while (a fault-injecting wrapper around the real one, as the
embedded engine cannot be stopped). Nothing is dead-lettered, nothing is committed past the
outage, and everything lands once it is over; an outage that outlasts the bound stops the sink
with its batch uncommitted."""

from __future__ import annotations

import time

import pytest

from llm_auction.consumers.service import OutageError, ServiceConfig, StreamService
from llm_auction.consumers.sink import SinkHandler
from llm_auction.infra import warehouse
from llm_auction.infra.kafka import make_consumer, make_producer
from llm_auction.schemas import ClickEvent, encode

pytestmark = pytest.mark.integration


class OutageClient:
    """The real client, refusing inserts (connection refused) while ``down()`` is true."""

    def __init__(self, client, down):
        self.client, self.down, self.refused = client, down, 0

    def insert_arrow(self, table, data, database=None, settings=None):
        if self.down():
            self.refused += 1
            raise ConnectionRefusedError(111, "Connection refused")
        return self.client.insert_arrow(table, data, database=database, settings=settings)


def _sink(settings, bootstrap, topic, group, client, **cfg):
    config = ServiceConfig("sink", group, {topic: ClickEvent}, batch_size=10, batch_max_wait_s=0.2, fault_backoff_s=0.05, fault_backoff_max_s=0.4, **cfg)
    consumer = make_consumer(settings, bootstrap, group, [topic], max_poll_records=10)
    producer = make_producer(settings, bootstrap)
    return StreamService(config, SinkHandler(client), consumer, producer), producer


def _produce_clicks(settings, bootstrap, topic, n):
    clicks = [ClickEvent(query_id=f"outage.q{i}", ad_id="Ad-1234", clicked=i % 2 == 0, policy_version="base", user_id="u1", bid=10 + i) for i in range(n)]
    producer = make_producer(settings, bootstrap)
    try:
        for c in clicks:
            producer.send(topic, key=c.query_id.encode(), value=encode(c)).get(timeout=30)
    finally:
        producer.close()
    return clicks


def _committed(settings, bootstrap, topic, group) -> int:
    from kafka import KafkaAdminClient, TopicPartition

    from llm_auction.infra.kafka import client_config

    admin = KafkaAdminClient(**client_config(settings, bootstrap))
    try:
        got = admin.list_group_offsets({group: [TopicPartition(topic, p) for p in range(3)]})[group]
        return sum(max(om.offset, 0) for om in got.values())
    finally:
        admin.close()


def test_a_warehouse_outage_dead_letters_nothing_and_the_sink_catches_up(kafka_settings, kafka_bootstrap, fresh_topic, fresh_group, clickhouse_client):
    topic, group = fresh_topic("outage"), fresh_group("sink")
    clicks = _produce_clicks(kafka_settings, kafka_bootstrap, topic, 30)
    outage = {"until": None}

    def down():  # refuses for 1.5 s from the first insert on
        if outage["until"] is None:
            outage["until"] = time.monotonic() + 1.5
        return time.monotonic() < outage["until"]

    client = OutageClient(clickhouse_client, down)
    svc, producer = _sink(kafka_settings, kafka_bootstrap, topic, group, client, fault_timeout_s=30)
    try:
        stats = svc.run(max_messages=30)
    finally:
        producer.close()
    assert client.refused >= 3 and stats["infra_faults"] == client.refused and stats["unhealthy"] == 0
    assert stats["dead_lettered"] == 0 and stats["consumed"] == 30
    t = warehouse.totals(clickhouse_client)
    assert t["click_events"] == 30 and t["clicks"] == 15 and t["revenue"] == sum(c.bid for c in clicks if c.clicked)
    assert _committed(kafka_settings, kafka_bootstrap, topic, group) == 30


def test_an_outage_past_the_bound_stops_the_sink_with_nothing_committed(kafka_settings, kafka_bootstrap, fresh_topic, fresh_group, clickhouse_client):
    topic, group = fresh_topic("outage"), fresh_group("sink")
    _produce_clicks(kafka_settings, kafka_bootstrap, topic, 10)
    client = OutageClient(clickhouse_client, lambda: True)
    svc, producer = _sink(kafka_settings, kafka_bootstrap, topic, group, client, fault_timeout_s=1.0)
    try:
        with pytest.raises(OutageError, match="Connection refused.*the batch is not committed"):
            svc.run(max_messages=10)
    finally:
        producer.close()
    assert svc.stats["dead_lettered"] == 0 and svc.stats["unhealthy"] == 1 and not svc.healthy
    assert warehouse.totals(clickhouse_client)["click_events"] == 0
    assert _committed(kafka_settings, kafka_bootstrap, topic, group) == 0
    # a restart after the outage replays the batch: everything lands
    svc2, producer2 = _sink(kafka_settings, kafka_bootstrap, topic, group, clickhouse_client)
    try:
        assert svc2.run(max_messages=10)["dead_lettered"] == 0
    finally:
        producer2.close()
    assert warehouse.totals(clickhouse_client)["click_events"] == 10
    assert _committed(kafka_settings, kafka_bootstrap, topic, group) == 10
