"""The service loop's delivery logic, with in-memory consumer/producer doubles (unit test of the
logic around Kafka; the real-broker behaviour is covered by the integration tests)."""

from collections import namedtuple

from llm_auction.consumers.service import Item, Outcome, Output, ServiceConfig, StreamService
from llm_auction.schemas import ClickEvent, DeadLetter, decode, encode
from llm_auction.schemas.topics import CLICKS, DEAD_LETTER

Rec = namedtuple("Rec", "topic partition offset key value")


class FakeConsumer:
    def __init__(self, records):
        self.records = list(records)
        self.commits = 0
        self.closed = False
        self.events = []
        self.committed = []  # per commit: {(topic, partition): offset}

    def subscribe(self, topics):
        self.topics = topics

    def subscription(self):
        return getattr(self, "topics", None)

    def poll(self, timeout_ms, max_records):
        batch, self.records = self.records[:max_records], self.records[max_records:]
        return {"tp": batch} if batch else {}

    def commit(self, offsets=None):  # waited for: the service's last commit, at shutdown
        self.events.append("last commit")
        self.committed.append(_plain(offsets))

    def commit_async(self, offsets=None, callback=None):  # a batch's commit
        self.commits += 1
        self.events.append("commit")
        self.committed.append(_plain(offsets))

    def close(self):
        self.closed = True


def _plain(offsets):
    return None if offsets is None else {(tp.topic, tp.partition): om.offset for tp, om in offsets.items()}


class FakeFuture:
    """kafka-python's FutureRecordMetadata as the loop reads it: ``is_done`` and ``exception``."""

    def __init__(self):
        self.is_done = False
        self.exception = None
        self.callbacks = []

    def add_callback(self, fn):  # kafka-python calls it with the record's metadata on success (at once if done)
        if self.is_done:
            if self.exception is None:
                fn("metadata")
        else:
            self.callbacks.append(fn)

    def complete(self, failing=False):
        self.is_done = True
        self.exception = RuntimeError("broker said no") if failing else None
        if not failing:
            for fn in self.callbacks:
                fn("metadata")


class FakeProducer:
    """Sends complete at once (``auto_ack``), or when ``flush`` is called, or by hand (``ack``);
    ``fail`` says which sends the broker refuses."""

    def __init__(self, log, partitions=None, auto_ack=True):
        self.auto_ack = auto_ack
        self.sent = []
        self.futures = []
        self.partitions = []  # the partition asked for, per send (None: the partitioner's choice)
        self.log = log
        self.topic_partitions = partitions or {}
        self.fail = lambda topic, value: False  # -> should this send fail?

    def send(self, topic, key, value, partition=None):
        self.sent.append((topic, key, value))
        self.partitions.append(partition)
        self.futures.append(FakeFuture())
        self.futures[-1].failing = self.fail(topic, value)
        if self.auto_ack:
            self.ack()
        return self.futures[-1]

    def ack(self):
        for f in self.futures:
            if not f.is_done:
                f.complete(f.failing)

    def partitions_for(self, topic):
        return self.topic_partitions.get(topic)

    def flush(self):
        self.log.append("flush")
        self.ack()


def click(i, bid=10):
    return ClickEvent(query_id=f"q{i}", ad_id="Ad-1234", clicked=bool(i % 2), policy_version="v0", user_id="u", bid=bid)


class Echo:
    """Re-emits each click; rejects bid 13; explodes on bid 66 (to exercise per-item retry)."""

    def handle(self, items):
        if any(it.event.bid == 66 for it in items):
            raise RuntimeError("boom")
        out = Outcome()
        for it in items:
            if it.event.bid == 13:
                out.rejected.append((it, "unlucky bid"))
            else:
                out.outputs.append(Output(CLICKS, it.event.query_id, it.event))
        return out


def _service(records, auto_ack=True, **cfg):
    consumer = FakeConsumer(records)
    producer = FakeProducer(consumer.events, auto_ack=auto_ack)
    svc = StreamService(ServiceConfig("t", "g", {"in": ClickEvent}, **cfg), Echo(), consumer, producer)
    return svc, consumer, producer


def _rec(i, value):
    return Rec("in", 0, i, f"q{i}".encode(), value)


def test_a_batch_is_committed_once_all_its_sends_are_acknowledged_and_in_order():
    recs = [_rec(i, encode(click(i))) for i in range(10)]
    svc, consumer, producer = _service(recs, auto_ack=False, batch_size=4)
    svc.process(recs[:4])
    svc.process(recs[4:8])
    assert consumer.committed == []  # nothing acknowledged yet: nothing committed
    for f in producer.futures[4:8]:  # the second batch's sends complete first
        f.complete()
    svc.settle()
    assert consumer.committed == []  # the first batch still waits: commits go in order
    for f in producer.futures[:4]:
        f.complete()
    svc.settle()
    assert consumer.committed == [{("in", 0): 8}] and svc.stats["consumed"] == 8  # both, as one commit
    svc.settle()
    assert len(consumer.committed) == 1  # nothing new settled: no commit


def test_the_loop_keeps_polling_while_outputs_are_in_flight_and_a_stop_commits_everything():
    payloads = [encode(click(i)) for i in range(10)]
    recs = [_rec(i, p) for i, p in enumerate(payloads)]
    svc, consumer, producer = _service(recs, auto_ack=False, batch_size=4, batch_max_wait_s=0)
    stats = svc.run(max_messages=10)
    assert [d for _, _, d in producer.sent] == payloads
    assert stats["consumed"] == 10 and stats["produced"] == 10 and stats["batches"] == 3
    # no batch waited for its acks in place: the stop flushes once and commits all, waiting for it
    assert consumer.events == ["flush", "last commit"] and consumer.committed == [{("in", 0): 10}] and consumer.closed


def test_a_refused_send_is_sent_again_and_its_batch_waits_for_it():
    recs = [_rec(i, encode(click(i))) for i in range(3)]
    svc, consumer, producer = _service(recs, auto_ack=False, batch_size=3)
    refuse = {recs[1].value}
    producer.fail = lambda topic, value: value in refuse
    svc.process(recs)
    producer.ack()
    refuse.clear()  # the broker takes it the second time
    svc.settle()
    assert consumer.committed == [] and svc.stats["sends_retried"] == 1
    assert [v for _, _, v in producer.sent] == [recs[i].value for i in (0, 1, 2, 1)]
    producer.ack()
    svc.settle()
    assert consumer.committed == [{("in", 0): 3}]


def test_outputs_the_broker_keeps_refusing_stop_the_service_without_committing_their_batch():
    import pytest

    from llm_auction.consumers.service import DeliveryError

    recs = [_rec(i, encode(click(i))) for i in range(4)]
    svc, consumer, producer = _service(recs, auto_ack=False, batch_size=2, send_attempts=3)
    producer.fail = lambda topic, value: value == recs[3].value
    with pytest.raises(DeliveryError, match="after 3 attempts.*broker said no"):
        svc.run(max_messages=4)
    # the first batch was committed, the one with the refused output was not; the consumer closed
    assert consumer.committed == [{("in", 0): 2}] and consumer.closed
    assert svc.stats["sends_retried"] == 2 and len(producer.sent) == 4 + 2


def test_too_many_batches_in_flight_make_the_loop_wait_for_them():
    recs = [_rec(i, encode(click(i))) for i in range(6)]
    svc, consumer, producer = _service(recs, auto_ack=False, batch_size=1, max_in_flight_batches=2)
    for r in recs[:3]:
        svc.process([r])
    assert consumer.events == ["flush", "commit"] and consumer.committed == [{("in", 0): 3}]


def test_a_hop_ends_when_the_broker_acknowledged_its_outputs_not_when_the_loop_noticed():
    import time

    TRec = namedtuple("TRec", "topic partition offset key value timestamp")
    now = time.time() * 1000.0
    recs = [TRec("in", 0, i, f"q{i}".encode(), encode(click(i)), now - 10.0) for i in range(2)]
    svc, consumer, producer = _service(recs, auto_ack=False, batch_size=2)
    svc.process(recs, [now - 5.0] * 2)  # polled 5 ms after they were produced
    time.sleep(0.03)
    producer.ack()  # the broker takes the outputs ~30 ms later...
    time.sleep(0.1)
    svc.settle()  # ...and the loop comes round 100 ms after that
    assert consumer.committed == [{("in", 0): 2}]
    hop, ack = list(svc.hop_ms), list(svc.ack_ms)
    assert len(hop) == 2 and all(35 <= h < 100 for h in hop), hop  # ~10 + 30, not ~140
    assert all(25 <= a < 90 for a in ack), ack


def test_poison_and_rejected_go_to_dead_letter_and_the_rest_flows():
    recs = [_rec(0, b"{not json"), _rec(1, encode(click(1))), _rec(2, encode(click(2, bid=13))), _rec(3, b'{"query_id": 5}')]
    svc, consumer, producer = _service(recs, batch_size=10, batch_max_wait_s=0)
    stats = svc.run(max_messages=4)
    dead = [decode(v, DeadLetter) for t, _, v in producer.sent if t == DEAD_LETTER]
    good = [decode(v, ClickEvent) for t, _, v in producer.sent if t == CLICKS]
    assert [g.query_id for g in good] == ["q1"]
    assert sorted(d.offset for d in dead) == [0, 2, 3]
    reasons = {d.offset: d.error for d in dead}
    assert "not JSON" in reasons[0] and reasons[2] == "unlucky bid" and "ClickEvent" in reasons[3]
    assert all(d.source_topic == "in" and d.consumer == "t" for d in dead)
    assert stats["dead_lettered"] == 3 and consumer.commits == 1


def test_a_batch_that_raises_is_retried_item_by_item():
    recs = [_rec(i, encode(click(i, bid=66 if i == 1 else 10))) for i in range(3)]
    svc, _, producer = _service(recs, batch_size=3, batch_max_wait_s=0)
    svc.run(max_messages=3)
    assert [decode(v, ClickEvent).query_id for t, _, v in producer.sent if t == CLICKS] == ["q0", "q2"]
    (dead,) = [decode(v, DeadLetter) for t, _, v in producer.sent if t == DEAD_LETTER]
    assert dead.offset == 1 and "RuntimeError: boom" in dead.error


def test_stop_finishes_the_pending_batch():
    recs = [_rec(i, encode(click(i))) for i in range(3)]
    svc, consumer, producer = _service(recs, batch_size=100, batch_max_wait_s=60)
    orig = consumer.poll

    def poll_then_stop(**kw):
        got = orig(**kw)
        svc.stop.set()
        return got

    consumer.poll = poll_then_stop
    stats = svc.run()
    assert stats["consumed"] == 3 and len(producer.sent) == 3 and consumer.commits == 1 and consumer.closed


def test_an_open_batch_closes_on_its_deadline_not_after_a_full_poll_timeout():
    recs = [_rec(i, encode(click(i))) for i in range(3)]
    svc, consumer, producer = _service(recs, batch_size=100, batch_max_wait_s=0.05, poll_timeout_ms=5000)
    timeouts = []
    orig = consumer.poll

    def poll(timeout_ms, max_records):
        if consumer.commits:  # the batch was processed: done
            svc.stop.set()
        else:
            timeouts.append(timeout_ms)
        return orig(timeout_ms=timeout_ms, max_records=max_records)

    consumer.poll = poll
    svc.run()
    assert timeouts[0] == 5000  # nothing pending: the configured wait
    assert consumer.commits == 1 and len(producer.sent) == 3
    assert len(timeouts) > 1 and 0 <= max(timeouts[1:]) <= 50  # pending: at most what is left of the batch's 50 ms


def test_hop_latency_splits_into_delivery_and_service_per_record():
    import time

    TRec = namedtuple("TRec", "topic partition offset key value timestamp")
    sent_ms = time.time() * 1000.0 - 40.0  # produced 40 ms before the loop sees them
    recs = [TRec("in", 0, i, f"q{i}".encode(), encode(click(i)), sent_ms + i) for i in range(6)]
    svc, consumer, producer = _service(recs, batch_size=3, batch_max_wait_s=5)
    orig = consumer.poll

    def slow_handle_poll(**kw):  # each poll returns one record; the batch closes at 3
        time.sleep(0.01)
        return orig(timeout_ms=kw["timeout_ms"], max_records=1)

    consumer.poll = slow_handle_poll
    svc.run(max_messages=6)
    hop, delivery, service = map(list, (svc.hop_ms, svc.delivery_ms, svc.service_ms))
    assert len(hop) == len(delivery) == len(service) == 6
    for h, d, s in zip(hop, delivery, service):
        assert abs(h - (d + s)) < 1e-6
        assert d >= 40.0 - 6 and s >= 0.0
    # within a batch of 3 polled 10 ms apart, the first record waited longest in the service
    assert service[0] > service[2] + 10 and service[3] > service[5] + 10


def test_outputs_keyed_like_their_input_go_to_its_partition_when_the_topics_match():
    six = set(range(6))
    records = [Rec("in", p, i, f"q{i}".encode(), encode(click(i))) for i, p in enumerate([3, 5, 0])]
    for partitions, copartition, expect in [
        ({"in": six, CLICKS: six}, True, [3, 5, 0]),  # same partitions: the input's
        ({"in": six, CLICKS: set(range(2))}, True, [None] * 3),  # other count: the partitioner's
        ({"in": six}, True, [None] * 3),  # no metadata for the output topic
        ({"in": six, CLICKS: six}, False, [None] * 3),  # turned off
    ]:
        consumer = FakeConsumer(records)
        producer = FakeProducer(consumer.events, partitions)
        svc = StreamService(ServiceConfig("t", "g", {"in": ClickEvent}, batch_size=3, copartition=copartition), Echo(), consumer, producer)
        svc.process(records)
        assert producer.partitions == expect and [k for _, k, _ in producer.sent] == [b"q0", b"q1", b"q2"]


def test_copartitioned_partition_is_what_murmur2_of_the_key_picks():
    from kafka.partitioner.default import murmur2

    # an upstream producer with the default partitioner put each key here; the output follows it
    n = 6
    records = [Rec("in", (murmur2(f"q{i}".encode()) & 0x7FFFFFFF) % n, i, f"q{i}".encode(), encode(click(i))) for i in range(40)]
    consumer = FakeConsumer(records)
    producer = FakeProducer(consumer.events, {"in": set(range(n)), CLICKS: set(range(n))})
    StreamService(ServiceConfig("t", "g", {"in": ClickEvent}, batch_size=40), Echo(), consumer, producer).process(records)
    assert producer.partitions == [(murmur2(k) & 0x7FFFFFFF) % n for _, k, _ in producer.sent]


def test_batch_commits_wait_when_asked_and_a_failed_async_commit_is_counted():
    records = [_rec(i, encode(click(i))) for i in range(4)]
    svc, consumer, _ = _service(records, batch_size=2, commit_async=False)
    svc.run(max_messages=4)
    assert consumer.events == ["last commit"] * 3 and consumer.commits == 0
    assert consumer.committed == [{("in", 0): 2}, {("in", 0): 4}, {("in", 0): 4}]
    svc, consumer, _ = _service(records, batch_size=2)
    svc._committed({}, RuntimeError("rebalanced"))
    svc._committed({}, object())  # a response: fine
    assert svc.stats["commits_failed"] == 1
