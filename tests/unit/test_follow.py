"""The topic follower (infra/follow.py) over a stand-in reader: order, offsets, waits, errors."""

from __future__ import annotations

import threading
from collections import namedtuple

import pytest

import llm_auction.infra.kafka as kafka
from llm_auction.infra.follow import TopicFollower

TP = namedtuple("TP", "topic partition")
Rec = namedtuple("Rec", "topic partition offset key value")


class Reader:
    """Answers each poll with the next prepared batch, then nothing; raises ``fail`` once drained."""

    def __init__(self, batches, fail: BaseException | None = None):
        self.batches, self.fail, self.closed = list(batches), fail, False
        self.drained = threading.Event()

    def poll(self, timeout_ms=0):
        if self.batches:
            return self.batches.pop(0)
        self.drained.set()
        if self.fail is not None:
            raise self.fail
        threading.Event().wait(timeout_ms / 1000)
        return {}

    def close(self):
        self.closed = True


@pytest.fixture
def reader(monkeypatch):
    made = {}

    def open_reader(settings, bootstrap, topics, **kw):
        made["topics"] = list(topics)
        return made["reader"]

    monkeypatch.setattr(kafka, "open_reader", open_reader)
    return made


def test_records_reach_the_handler_in_topic_order_and_the_offsets_are_tracked(reader):
    batch = {TP("b", 1): [Rec("b", 1, 4, b"k", b"b4")], TP("a", 0): [Rec("a", 0, 0, b"k", b"a0"), Rec("a", 0, 1, b"k", b"a1")], TP("b", 0): [Rec("b", 0, 9, b"k", b"b9")]}
    reader["reader"] = r = Reader([batch])
    got = []
    with TopicFollower(None, "unused", ["a", "b"], lambda rec: got.append(rec.value), poll_timeout_ms=10) as f:
        assert f.wait_offset("b", 1, 4, timeout_s=5) and f.caught_up.wait(5)
        assert not f.wait_offset("a", 0, 2, timeout_s=0.1)  # not read: times out
    assert reader["topics"] == ["a", "b"] and got == [b"a0", b"a1", b"b9", b"b4"]
    assert f.ends == {("a", 0): 2, ("b", 0): 10, ("b", 1): 5} and r.closed and f.error is None


def test_wait_until_sees_what_the_handler_recorded(reader):
    reader["reader"] = Reader([{TP("t", 0): [Rec("t", 0, 0, None, b"id-1")]}])
    ids: set[bytes] = set()
    f = TopicFollower(None, "unused", ["t"], lambda rec: ids.add(rec.value), poll_timeout_ms=10).start()
    try:
        assert f.wait_until(lambda: b"id-1" in ids, timeout_s=5)
    finally:
        assert f.stop() is None


def test_an_error_stops_the_thread_is_kept_and_ends_the_waits(reader):
    reader["reader"] = r = Reader([], fail=RuntimeError("broker gone"))
    f = TopicFollower(None, "unused", ["t"], lambda rec: None, poll_timeout_ms=10).start()
    assert r.drained.wait(5)
    assert not f.wait_until(lambda: False, timeout_s=5)  # returns on the error, not the timeout
    err = f.stop()
    assert isinstance(err, RuntimeError) and f.error is err and r.closed
