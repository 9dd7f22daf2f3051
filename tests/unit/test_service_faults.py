"""Infrastructure faults are not poison: the batch is retried with backoff, nothing is
dead-lettered or committed past it, the service reports itself unhealthy and, past its bound,
stops with the batch uncommitted. Input faults still go to the dead-letter topic.

In-memory consumer and producer doubles (from test_service_loop); the sink runs its real insert
path (``warehouse.insert_arrow`` and ``describe_error``) against a client that fails on demand.
"""

from __future__ import annotations

import time

import pytest
from test_service_loop import FakeConsumer, FakeProducer, Rec, click

from llm_auction.consumers.faults import is_transient
from llm_auction.consumers.service import Item, Outcome, Output, OutageError, ServiceConfig, StreamService
from llm_auction.consumers.sink import SinkHandler
from llm_auction.infra.clickhouse import describe_error
from llm_auction.infra.errors import InfraError
from llm_auction.models.adllm import UnknownPolicy
from llm_auction.schemas import ClickEvent, DeadLetter, SchemaError, decode, encode
from llm_auction.schemas.topics import CLICKS, DEAD_LETTER

FAST = {"fault_backoff_s": 0.01, "fault_backoff_max_s": 0.05}


class FlakyClient:
    """A ClickHouse client (clickhouse-connect's ``insert_arrow``) that refuses while ``down()``."""

    def __init__(self, down, on_fail=None):
        self.down = down
        self.on_fail = on_fail or (lambda: None)
        self.inserted: list[str] = []
        self.failures = 0

    def insert_arrow(self, table, data, database=None, settings=None):
        if self.down():
            self.failures += 1
            self.on_fail()
            raise ConnectionRefusedError(111, "Connection refused")
        self.inserted += data.column("event_id").to_pylist()


def _sink(records, client, **cfg):
    consumer = FakeConsumer(records)
    producer = FakeProducer(consumer.events)
    svc = StreamService(ServiceConfig("sink", "g", {CLICKS: ClickEvent}, **{**FAST, **cfg}), SinkHandler(client), consumer, producer)
    return svc, consumer, producer


def _clicks(n):
    return [Rec(CLICKS, 0, i, f"q{i}".encode(), encode(click(i))) for i in range(n)]


def _ids(records):
    return [decode(r.value, ClickEvent).event_id for r in records]


def _dead(producer):
    return [decode(v, DeadLetter) for t, _, v in producer.sent if t == DEAD_LETTER]


def test_a_warehouse_that_fails_for_a_while_loses_nothing_and_dead_letters_nothing():
    records = _clicks(6)
    calls = {"n": 0}
    committed_during_fault = []

    def down():  # the first batch goes in; then the warehouse refuses five times, then recovers
        calls["n"] += 1
        return 2 <= calls["n"] <= 6

    client = FlakyClient(down)
    svc, consumer, producer = _sink(records, client, batch_size=3, batch_max_wait_s=0)
    health = []
    client.on_fail = lambda: (committed_during_fault.append(list(consumer.committed)), health.append(svc.healthy))
    stats = svc.run(max_messages=6)
    assert _dead(producer) == [] and stats["dead_lettered"] == 0
    assert client.inserted == _ids(records)  # every event, once, in order
    assert client.failures == 5 and stats["infra_faults"] == 5 and stats["unhealthy"] == 0 and svc.healthy
    assert health == [True] + [False] * 4  # unhealthy from the first failure until the batch went in
    # while the second batch failed, nothing past the first batch was committed
    assert committed_during_fault == [[{(CLICKS, 0): 3}]] * 5
    assert consumer.committed == [{(CLICKS, 0): 3}, {(CLICKS, 0): 6}, {(CLICKS, 0): 6}]  # the last: the stop's


def test_a_persistent_warehouse_fault_stops_the_service_after_its_bound_leaving_the_batch_uncommitted():
    records = _clicks(6)
    calls = {"n": 0}

    def down():
        calls["n"] += 1
        return calls["n"] >= 2  # the first batch goes in, then the warehouse is gone for good

    client = FlakyClient(down)
    svc, consumer, producer = _sink(records, client, batch_size=3, batch_max_wait_s=0, fault_timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(OutageError, match=r"sink: InfraError: cannot insert 3 rows into llm_auction.clicks: .*refused.* the batch is not committed, so a restart replays it"):
        svc.run(max_messages=6)
    took = time.monotonic() - t0
    assert 0.3 <= took < 3.0, took
    assert consumer.committed == [{(CLICKS, 0): 3}] and consumer.closed  # the failing batch (3..5) is not
    assert client.inserted == _ids(records[:3])
    assert _dead(producer) == [] and svc.stats["unhealthy"] == 1 and not svc.healthy
    assert client.failures == svc.stats["infra_faults"] >= 4  # retried with backoff: 0.01, 0.02, 0.04, 0.05...


def test_a_stop_during_a_fault_ends_the_wait_without_committing_the_batch():
    records = _clicks(3)
    client = FlakyClient(lambda: True)
    svc, consumer, producer = _sink(records, client, batch_size=3, batch_max_wait_s=0, fault_backoff_s=30, fault_timeout_s=60)
    client.on_fail = svc.stop.set  # SIGTERM arrives while the warehouse is down
    t0 = time.monotonic()
    with pytest.raises(OutageError, match="stopped during an infrastructure fault"):
        svc.run()
    assert time.monotonic() - t0 < 5 and consumer.committed == [] and _dead(producer) == []


class Responder:
    """A responder-like handler: fails with ``errors`` (one per call, in turn) before answering."""

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    def handle(self, items):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Outcome(outputs=[Output(CLICKS, it.event.query_id, it.event) for it in items])


class OutOfMemoryError(RuntimeError):  # what torch raises (torch.OutOfMemoryError / torch.cuda.OutOfMemoryError)
    pass


def test_unknown_policy_and_out_of_memory_are_retried_not_dead_lettered():
    records = [Rec("in", 0, i, f"q{i}".encode(), encode(click(i))) for i in range(4)]
    consumer = FakeConsumer(records)
    producer = FakeProducer(consumer.events)
    handler = Responder([UnknownPolicy("policy version 'v2' is not loaded"), OutOfMemoryError("CUDA out of memory"), MemoryError()])
    svc = StreamService(ServiceConfig("responder", "g", {"in": ClickEvent}, batch_size=4, batch_max_wait_s=0, **FAST), handler, consumer, producer)
    stats = svc.run(max_messages=4)
    assert handler.calls == 4 and stats["infra_faults"] == 3 and stats["dead_lettered"] == 0
    assert [decode(v, ClickEvent).query_id for t, _, v in producer.sent if t == CLICKS] == ["q0", "q1", "q2", "q3"]
    assert consumer.committed[-1] == {("in", 0): 4}


def test_an_input_fault_is_still_dead_lettered_at_once():
    records = [Rec("in", 0, i, f"q{i}".encode(), encode(click(i))) for i in range(2)]
    consumer = FakeConsumer(records)
    producer = FakeProducer(consumer.events)
    handler = Responder([ValueError("bid is not a number")] * 3)  # the batch, then each item
    svc = StreamService(ServiceConfig("responder", "g", {"in": ClickEvent}, batch_size=2, batch_max_wait_s=0, **FAST), handler, consumer, producer)
    stats = svc.run(max_messages=2)
    assert [d.error for d in _dead(producer)] == ["ValueError: bid is not a number"] * 2
    assert stats["infra_faults"] == 0 and stats["dead_lettered"] == 2 and handler.calls == 3 and svc.healthy


def _caused(exc, cause):
    try:
        raise exc from cause
    except BaseException as e:  # noqa: BLE001
        return e


def _translated(cause):
    try:
        try:
            raise cause
        except Exception as e:  # noqa: BLE001
            raise describe_error(e, "insert 3 rows into llm_auction.clicks") from None
    except InfraError as e:
        return e


@pytest.mark.parametrize(
    "exc, transient",
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (TimeoutError("timed out"), True),
        (OSError(28, "No space left on device"), True),
        (MemoryError(), True),
        (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (UnknownPolicy("policy version 'v9' is not loaded"), True),
        (InfraError("ClickHouse at http://ch:8123 refused the connection"), True),
        (_translated(RuntimeError("Code: 210. DB::NetException: Connection reset by peer")), True),
        (_translated(RuntimeError("Code: 241. DB::Exception: Memory limit (total) exceeded")), True),
        (_translated(RuntimeError("Code: 60. DB::Exception: Table llm_auction.clicks does not exist")), True),
        (_translated(RuntimeError("Code: 53. DB::Exception: Type mismatch in VALUES section")), False),
        (_translated(RuntimeError("Code: 27. DB::Exception: Cannot parse input")), False),
        (_caused(RuntimeError("insert failed"), ConnectionResetError(104, "Connection reset by peer")), True),
        (ValueError("bid is not a number"), False),
        (KeyError("Ad-9999"), False),
        (RuntimeError("boom"), False),
        (SchemaError("ClickEvent", "bid", "not an integer"), False),
    ],
)
def test_is_transient_tells_infrastructure_from_input(exc, transient):
    assert is_transient(exc) is transient


def test_client_library_errors_are_infrastructure_except_refused_data():
    from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    assert is_transient(OperationalError("HTTPConnectionPool: Max retries exceeded")) is True
    assert is_transient(DatabaseError("Code: 202. DB::Exception: Too many simultaneous queries")) is True
    assert is_transient(DatabaseError("Code: 70. DB::Exception: Cannot convert type")) is False
    assert is_transient(DataError("Invalid value for UInt8 column")) is False
    assert is_transient(KafkaTimeoutError()) is True and is_transient(KafkaConnectionError()) is True


def test_a_pydantic_validation_error_is_an_input_fault():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        ClickEvent.model_validate({"query_id": 5})
    assert is_transient(e.value) is False
    assert Item  # the public names used by handlers stay importable from the service module
