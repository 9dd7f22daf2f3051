"""The replay counts what the broker acknowledged, sends refused queries again, and says how many
were lost when the broker keeps refusing (in-memory producer double from test_service_loop)."""

from __future__ import annotations

import pytest
from test_service_loop import FakeProducer

from llm_auction.producers.replay import ReplayConfig, replay
from llm_auction.schemas import QueryEvent, decode


def _delivered(producer) -> list[str]:
    """query ids the broker acknowledged, in order of their (last) send"""
    return [decode(v, QueryEvent).query_id for (_, _, v), f in zip(producer.sent, producer.futures) if f.is_done and f.exception is None]


def _query_id(value: bytes) -> str:
    return decode(value, QueryEvent).query_id


def test_a_refused_query_is_sent_again_and_counted_once_acknowledged(small_world):
    producer = FakeProducer([])
    refused_once: set[str] = set()

    def fail(topic, value):  # the broker refuses queries 2 and 5 the first time only
        qid = _query_id(value)
        if qid.endswith((".2", ".5")) and qid not in refused_once:
            refused_once.add(qid)
            return True
        return False

    producer.fail = fail
    n = replay(small_world, producer, ReplayConfig(split="test", limit=10, run_id="r1"), progress=False)
    assert n == 10
    assert sorted(_delivered(producer)) == sorted(f"{r.query_id}.r1.{i}" for i, r in zip(range(10), small_world.records("test")))
    assert len(producer.sent) == 12  # ten, and the two refused ones again


def test_a_query_the_broker_keeps_refusing_ends_the_replay_with_the_count_lost(small_world):
    from llm_auction.infra.delivery import DeliveryError

    producer = FakeProducer([])
    producer.fail = lambda topic, value: _query_id(value).endswith(".r2.7")
    with pytest.raises(DeliveryError, match=r"^replay: 1 record\(s\) not accepted by the broker after 3 attempts \(RuntimeError: broker said no\); 1 of 10 queries were not delivered, 9 were$"):
        replay(small_world, producer, ReplayConfig(split="test", limit=10, run_id="r2"), progress=False)
    assert len(_delivered(producer)) == 9 and len(producer.sent) == 10 + 2


def test_sends_wait_in_bounded_windows_and_a_stop_returns_what_was_acknowledged(small_world):
    import threading

    log: list[str] = []
    producer = FakeProducer(log, auto_ack=False)  # acks only on flush
    stop = threading.Event()
    sent_before_flush = []
    orig = producer.flush

    def flush():
        sent_before_flush.append(sum(1 for f in producer.futures if not f.is_done))
        orig()
        if len(sent_before_flush) == 2:
            stop.set()

    producer.flush = flush
    n = replay(small_world, producer, ReplayConfig(split="test", limit=40, run_id="r3"), progress=False, window=3, max_windows=2, stop=stop)
    # a flush once a third window waits (9 sends unacknowledged), then the stop's flush
    assert sent_before_flush[:2] == [9, 9] and n == len(_delivered(producer)) == 18
