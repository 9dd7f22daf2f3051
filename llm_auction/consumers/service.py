"""The one consume -> process -> produce -> commit loop every streaming service runs.

Contract:

- **At least once.** A batch's offsets are committed only after the broker acknowledged every
  output of the batch (or the handler wrote them to ClickHouse), and in order, with explicit
  offsets. A crash therefore replays work, never skips it; downstream deduplicates by event
  identity, so a replay is harmless.
- **Non-blocking acks.** A processed batch joins a queue of batches in flight (at most
  ``max_in_flight_batches``) and the loop goes back to polling; batches whose sends have all
  completed are committed from the head of the queue. Waiting in place (``producer.flush()``)
  would stall every batch for a produce round trip. The commit is sent without waiting for its
  answer (``commit_async``): a lost commit only replays deduplicated work. At shutdown
  everything in flight is waited for and committed synchronously.
- **Refused outputs.** An output the producer gave up on is sent again (``send_attempts`` in
  all) and its batch stays uncommitted; after the last attempt the service stops with
  :class:`DeliveryError`, so a restart replays the batch.
- **Poison messages.** A record that does not decode, or that the handler rejects, goes to
  ``auction.dead-letter`` with the reason and is counted; a batch whose handler raises is retried
  item by item, so one bad record cannot block its neighbours.
- **Infrastructure faults are not poison.** When the failure is the infrastructure's (ClickHouse
  or the broker unreachable, a timeout, memory exhausted, a policy version not loaded:
  :func:`~llm_auction.consumers.faults.is_transient` decides), the whole batch is retried with
  exponential backoff (``fault_backoff_s`` doubling up to ``fault_backoff_max_s``); nothing is
  dead-lettered and no later batch is processed, so nothing is committed past it. Meanwhile the
  service reports itself unhealthy (``stats["unhealthy"] == 1``, a warning per retry); after
  ``fault_timeout_s`` it stops with :class:`OutageError`, the batch uncommitted, so a restart
  replays it. The bound stays below kafka-python's ``max_poll_interval_ms`` (300 s), past which
  the group takes the partitions from a consumer that does not poll.
- **Batches** close on size or on age (``batch_max_wait_s`` after their first record): the sink
  wants large, time-bounded inserts and the responder model-sized batches. With
  ``batch_max_wait_s=0`` a batch is what one poll returns, the setting for a latency-bound hop
  (short polls slow kafka-python's fetches). A hop ends at the broker's last acknowledgement of
  the batch's outputs (a producer callback), which is when the next hop can read them.
- **Shutdown** is graceful: set ``stop`` (the CLI does on SIGTERM/SIGINT); the current batch is
  finished and committed, then the consumer closes. A rebalance needs no hook: a batch in flight
  when its partition moves is committed late or not at all, and only acknowledged work is
  ever committed.

Measurements behind these choices are in docs/benchmarks.md.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from llm_auction.infra.delivery import DeliveryError, Sends
from llm_auction.infra.errors import InfraError
from llm_auction.logs import log_event
from llm_auction.schemas import DeadLetter, SchemaError, decode, encode
from llm_auction.schemas.topics import DEAD_LETTER

from .faults import is_transient

__all__ = ["DeliveryError", "Handler", "Item", "Outcome", "OutageError", "Output", "ServiceConfig", "StreamService", "is_transient"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    """An event to produce: topic, key (query_id for per-query topics) and the event."""

    topic: str
    key: str
    event: BaseModel


@dataclass
class Item:
    """One consumed record, decoded."""

    record: Any
    event: BaseModel


class OutageError(InfraError):
    """An infrastructure fault outlasted ``fault_timeout_s`` (or a stop came during one); the
    batch it hit was not committed, so a restart replays it."""


class _InFlight(Sends):
    """A processed batch waiting for the broker to acknowledge its sends before it is committed."""

    __slots__ = ("offsets", "stamps", "sent_ms")

    def __init__(self) -> None:
        super().__init__()
        self.offsets: dict[Any, int] = {}  # TopicPartition -> next offset to read (last + 1)
        self.stamps: list[tuple[float, float | None]] = []  # per record: (Kafka timestamp ms, polled at ms)
        self.sent_ms = 0.0  # wall clock when the last of its sends was handed to the producer

    def done_at_ms(self) -> float:
        """When the hop was done: the broker's last ack (from then on the downstream can read it),
        not when the loop came round to notice; a batch with nothing to send, when it was handled."""
        if not self.futures:
            return self.sent_ms
        if not self.acked_ms:  # done, but the last callback has not run yet (it runs just after)
            return time.time() * 1000.0
        return max(self.acked_ms, self.sent_ms)


@dataclass
class Outcome:
    outputs: list[Output] = field(default_factory=list)
    rejected: list[tuple[Item, str]] = field(default_factory=list)


class Handler(Protocol):
    """What a service does with a batch of decoded events."""

    def handle(self, items: Sequence[Item]) -> Outcome: ...


@dataclass
class ServiceConfig:
    name: str
    group_id: str
    topics: dict[str, type[BaseModel]]  # topic -> event model it carries
    batch_size: int = 32
    batch_max_wait_s: float = 0.2
    poll_timeout_ms: int = 100
    copartition: bool = True  # see StreamService._partitions_by_key
    commit_async: bool = True  # see the module docstring; False waits for every commit
    max_in_flight_batches: int = 16  # processed batches awaiting acks; more makes the loop wait
    send_attempts: int = 3  # per output, counting the first; each is itself retried by the producer
    # Infrastructure faults (module docstring, consumers/faults.py): the batch is retried after
    # fault_backoff_s, doubling up to fault_backoff_max_s, for fault_timeout_s in all; then the
    # service stops with OutageError (`serve` sets it from LLMA_SERVICE_FAULT_TIMEOUT_S).
    fault_timeout_s: float = 120.0
    fault_backoff_s: float = 0.5
    fault_backoff_max_s: float = 15.0


# Collector tuning for a streaming process. Every decoded event is a tree of small objects (a
# query holds 100 candidate models), so a service allocates hundreds of thousands per second and
# CPython's default thresholds (700 allocations) run a collection every few events; each
# full collection then walks the whole heap of torch, transformers and the encoder cache.
# On QueryEvent decoding the default collector cost several times the decoding itself
# (docs/benchmarks.md, service loop). Freezing what startup built and raising the young-generation
# threshold keeps the collector (events are acyclic; cycles are rare) at a small fraction of that.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc_for_streaming() -> None:
    """Move everything allocated so far out of the collector's sight and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class StreamService:
    """Runs ``handler`` over the topics of ``config`` until ``stop`` is set (or limits are hit)."""

    def __init__(self, config: ServiceConfig, handler: Handler, consumer, producer, stop: threading.Event | None = None):
        self.config = config
        self.handler = handler
        self.consumer = consumer
        self.producer = producer
        self.stop = stop or threading.Event()
        self.stats: Counter[str] = Counter()
        # Per record, ms from its Kafka timestamp to the broker's acknowledgement of its batch's
        # last output (a batch with no outputs: to its handling): the latency this hop adds
        # (bounded; read by benchmarks and health). It splits into delivery (timestamp -> returned
        # by poll: the upstream producer, the broker, the fetch) and service (poll -> acknowledged:
        # batching, processing, producing), kept index-aligned for records the loop polled, so the
        # two parts can be told apart. ``ack_ms`` is the part of service spent waiting for the acks.
        self.hop_ms: deque[float] = deque(maxlen=200_000)
        self.delivery_ms: deque[float] = deque(maxlen=200_000)
        self.service_ms: deque[float] = deque(maxlen=200_000)
        self.ack_ms: deque[float] = deque(maxlen=200_000)
        self._lock = threading.Lock()
        self._same_count: dict[tuple[str, str], bool] = {}
        self._in_flight: deque[_InFlight] = deque()
        self._batch = _InFlight()  # the batch being processed
        self._settled: dict[Any, int] = {}  # TopicPartition -> offset, everything settled so far
        self.failing_since: float | None = None  # monotonic time an infrastructure fault began; None: healthy

    @property
    def healthy(self) -> bool:
        """False while an infrastructure fault holds the loop (also in ``stats["unhealthy"]``)."""
        return self.failing_since is None

    # -- one batch -------------------------------------------------------------------------
    def _dead_letter(self, record, reason: str) -> None:
        dl = DeadLetter.of(record.value, reason, source_topic=record.topic, partition=record.partition, offset=record.offset, key=record.key, consumer=self.config.name)
        self._send(DEAD_LETTER, (dl.key or "").encode("utf-8"), encode(dl), None)
        self._count("dead_lettered")
        log_event(log, "dead-lettered a record", logging.WARNING, service=self.config.name, topic=record.topic, offset=record.offset, reason=reason[:300])

    def _send(self, topic: str, key: bytes, value: bytes, partition: int | None) -> None:
        """Produce one output of the batch being processed, kept for a resend until it is acked."""
        self._batch.add(self.producer, topic, key, value, partition)

    def _committed(self, offsets, response) -> None:
        """commit_async's callback (kafka-python's IO thread): count and log a failed commit."""
        if isinstance(response, Exception):
            self._count("commits_failed")
            log_event(log, "offset commit failed; a restart replays those records (deduplicated downstream)", logging.WARNING, service=self.config.name, error=f"{type(response).__name__}: {response}"[:300])

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _handle(self, items: list[Item]) -> Outcome:
        """The handler's outcome; an input fault rejects the record it comes from (a failing batch
        is retried item by item), an infrastructure fault propagates (see :meth:`_handle_until_done`)."""
        try:
            return self.handler.handle(items)
        except Exception as e:  # noqa: BLE001 - a failing batch is retried item by item
            if is_transient(e):
                raise
            if len(items) == 1:
                return Outcome(rejected=[(items[0], f"{type(e).__name__}: {e}")])
            log_event(log, "batch failed; retrying item by item", logging.WARNING, service=self.config.name, error=f"{type(e).__name__}: {e}"[:300])
            out = Outcome()
            for it in items:
                one = self._handle([it])
                out.outputs += one.outputs
                out.rejected += one.rejected
            return out

    def _handle_until_done(self, items: list[Item]) -> Outcome:
        """:meth:`_handle`, retried with exponential backoff while the infrastructure fails.

        Nothing else is processed meanwhile, so nothing is committed past the batch (earlier
        batches whose outputs are acknowledged still are). Past ``fault_timeout_s``, or when
        ``stop`` is set during a wait, raises :class:`OutageError` with the batch uncommitted.
        """
        cfg = self.config
        delay, attempt = cfg.fault_backoff_s, 0
        while True:
            try:
                outcome = self._handle(items)
            except Exception as e:  # noqa: BLE001 - _handle lets only infrastructure faults out
                attempt += 1
                now = time.monotonic()
                if self.failing_since is None:
                    self.failing_since = now
                failing_s = now - self.failing_since
                error = f"{type(e).__name__}: {e}"[:300]
                self._count("infra_faults")
                with self._lock:
                    self.stats["unhealthy"] = 1
                wait = min(delay, cfg.fault_timeout_s - failing_s)
                if wait <= 0:
                    log_event(log, "infrastructure fault outlasted the bound; stopping with the batch uncommitted", logging.ERROR, service=cfg.name, error=error, attempts=attempt, failing_for_s=round(failing_s, 1), healthy=False)
                    raise OutageError(f"{cfg.name}: {error} for {failing_s:.0f} s ({attempt} attempts, fault_timeout_s={cfg.fault_timeout_s:g}); the batch is not committed, so a restart replays it") from None
                log_event(log, "infrastructure fault; retrying the batch, nothing is dead-lettered or committed past it", logging.WARNING, service=cfg.name, error=error, attempt=attempt, retry_in_s=round(wait, 2), failing_for_s=round(failing_s, 1), healthy=False)
                self.settle()  # earlier batches already acknowledged are committed meanwhile
                if self.stop.wait(wait):
                    raise OutageError(f"{cfg.name}: stopped during an infrastructure fault ({error}); the batch is not committed, so a restart replays it") from None
                delay = min(delay * 2, cfg.fault_backoff_max_s)
                continue
            if self.failing_since is not None:
                log_event(log, "infrastructure fault over; healthy again", service=cfg.name, failing_for_s=round(time.monotonic() - self.failing_since, 1), attempts=attempt + 1, healthy=True)
                self.failing_since = None
                with self._lock:
                    self.stats["unhealthy"] = 0
            return outcome

    @staticmethod
    def _partitions_by_key(records: Sequence[Any]) -> dict[bytes, tuple[str, int]]:
        """Input key -> (topic, partition), for sending outputs keyed like their input.

        An output keyed like an input record (a response and its query, a click and its response:
        all keyed by ``query_id``) goes to the partition that input came from, when both topics
        have as many partitions. That is the partition the default partitioner would choose
        (murmur2 of the same key, modulo the same count) whenever the upstream producer used it,
        and otherwise it still keeps one query's events in one partition number across topics,
        which joins by key need. It spares kafka-python's pure-Python murmur2 and partition
        lookup, a visible share of the user simulator's CPU (bench/pipeline.py; docs/benchmarks.md).
        """
        return {r.key: (r.topic, r.partition) for r in records if r.key}

    def _copartitioned(self, in_topic: str, out_topic: str) -> bool:
        same = self._same_count.get((in_topic, out_topic))
        if same is None:
            try:
                n_in, n_out = (self.producer.partitions_for(t) for t in (in_topic, out_topic))
                same = bool(n_in) and n_in == n_out
            except Exception as e:  # noqa: BLE001 - no metadata: let the partitioner choose
                log_event(log, "no partition metadata; outputs use the default partitioner", logging.WARNING, topics=[in_topic, out_topic], error=str(e)[:200])
                same = False
            self._same_count[(in_topic, out_topic)] = same
        return same

    def process(self, records: Sequence[Any], polled_ms: Sequence[float] | None = None) -> None:
        """Decode, handle, produce, dead-letter, then queue the batch to be committed once its
        outputs are acknowledged (:meth:`settle`): one batch, at-least-once.

        ``polled_ms``: per record, the wall-clock ms when poll returned it (for the latency split).
        """
        items: list[Item] = []
        for r in records:
            model = self.config.topics.get(r.topic)
            try:
                if model is None:
                    raise SchemaError("?", "<topic>", f"no model registered for topic {r.topic}")
                items.append(Item(r, decode(r.value, model)))
            except SchemaError as e:
                self._dead_letter(r, str(e))
        outcome = self._handle_until_done(items) if items else Outcome()
        for item, reason in outcome.rejected:
            self._dead_letter(item.record, reason)
        if outcome.outputs:
            inputs = self._partitions_by_key(records) if self.config.copartition else {}
            send = self._send
            for o in outcome.outputs:
                key = o.key.encode("utf-8")
                src = inputs.get(key)
                send(o.topic, key, encode(o.event), src[1] if src is not None and self._copartitioned(src[0], o.topic) else None)
        from kafka.structs import TopicPartition  # lazy: kafka is not needed to import this module

        batch, self._batch = self._batch, _InFlight()
        offsets = batch.offsets
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if r.offset >= offsets.get(tp, -1):
                offsets[tp] = r.offset + 1
        polled = polled_ms if polled_ms is not None else [None] * len(records)
        batch.stamps = [(r.timestamp, p) for r, p in zip(records, polled) if getattr(r, "timestamp", None)]
        batch.sent_ms = time.time() * 1000.0
        self._in_flight.append(batch)
        self._count("consumed", len(records))
        self._count("produced", len(outcome.outputs))
        self._count("batches")
        self.settle(wait=len(self._in_flight) > self.config.max_in_flight_batches)

    def settle(self, wait: bool = False, sync: bool = False) -> None:
        """Commit, oldest first, the batches in flight whose sends have all been acknowledged.

        ``wait``: flush the producer, so every batch in flight settles (or fails). ``sync``: wait
        for the commit's answer too, and commit everything settled so far (shutdown). A batch with
        a failed send has it sent again and holds back the commits of the batches behind it; after
        ``send_attempts`` it raises :class:`DeliveryError`.
        """
        settled: dict[Any, int] = {}
        try:
            while self._in_flight:
                head = self._in_flight[0]
                if not head.settle(self.producer, self.config.send_attempts, self.config.name, "their batch is not committed, so a restart replays it", wait=wait, on_retry=self._resending):
                    break
                done_ms = head.done_at_ms()
                self.hop_ms.extend(done_ms - ts for ts, _ in head.stamps)
                polled = [(ts, p) for ts, p in head.stamps if p is not None]
                self.delivery_ms.extend(p - ts for ts, p in polled)
                self.service_ms.extend(done_ms - p for _, p in polled)
                self.ack_ms.extend([done_ms - head.sent_ms] * len(polled))
                settled.update(head.offsets)
                self._in_flight.popleft()
        except DeliveryError:
            if settled:  # keep the work acknowledged before the failing batch
                self._settled.update(settled)
                self.consumer.commit(offsets=_commit_offsets(settled))
            raise
        self._settled.update(settled)
        if sync and self._settled:
            self.consumer.commit(offsets=_commit_offsets(self._settled))
        elif settled:
            if self.config.commit_async:
                self.consumer.commit_async(offsets=_commit_offsets(settled), callback=self._committed)
            else:
                self.consumer.commit(offsets=_commit_offsets(settled))

    def _resending(self, failed: int, errors: list[str]) -> None:
        self._count("sends_retried", failed)
        log_event(log, "outputs failed after the producer's retries; sending them again, their batch stays uncommitted", logging.WARNING, service=self.config.name, failed=failed, errors=errors[:3])

    # -- the loop --------------------------------------------------------------------------
    def run(self, max_messages: int | None = None, idle_timeout_s: float | None = None) -> Counter[str]:
        """Consume until ``stop`` is set, ``max_messages`` were processed, or nothing arrived for ``idle_timeout_s``."""
        cfg = self.config
        if set(self.consumer.subscription() or ()) != set(cfg.topics):
            self.consumer.subscribe(list(cfg.topics))
        tune_gc_for_streaming()
        pending: list[Any] = []
        pending_polled_ms: list[float] = []
        first_at = 0.0
        last_record_at = time.monotonic()
        log_event(log, "service started", service=cfg.name, topics=list(cfg.topics), group=cfg.group_id)
        try:
            while not self.stop.is_set():
                want = cfg.batch_size - len(pending)
                timeout_ms = cfg.poll_timeout_ms
                if pending:  # never wait past the open batch's deadline for more records
                    timeout_ms = max(0, min(timeout_ms, int((first_at + cfg.batch_max_wait_s - time.monotonic()) * 1000)))
                polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max(want, 1))
                now = time.monotonic()
                now_ms = time.time() * 1000.0
                for recs in polled.values():
                    if recs and not pending:
                        first_at = now
                    pending.extend(recs)
                    pending_polled_ms.extend([now_ms] * len(recs))
                if polled:
                    last_record_at = now
                if pending and (len(pending) >= cfg.batch_size or now - first_at >= cfg.batch_max_wait_s):
                    self.process(pending, pending_polled_ms)
                    pending, pending_polled_ms = [], []
                elif self._in_flight:
                    self.settle()
                if max_messages is not None and self.stats["consumed"] >= max_messages:
                    break
                if idle_timeout_s is not None and not pending and now - last_record_at > idle_timeout_s:
                    break
            if pending:  # graceful stop: finish what was read
                self.process(pending, pending_polled_ms)
            self.settle(wait=True, sync=True)  # wait for the last commit: a clean stop replays nothing
        finally:
            try:
                self.consumer.close()
            finally:
                log_event(log, "service stopped", service=cfg.name, **dict(self.stats))
        return self.stats


def _commit_offsets(offsets: dict[Any, int]) -> dict[Any, Any]:
    from kafka.structs import OffsetAndMetadata

    return {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}


def run_in_threads(services: Sequence[StreamService], **run_kw) -> list[threading.Thread]:
    """Start each service's loop in a daemon thread (the in-process demo and tests use this)."""
    threads = []
    for s in services:
        t = threading.Thread(target=s.run, kwargs=run_kw, name=s.config.name, daemon=True)
        t.start()
        threads.append(t)
    return threads


def install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop`` so services finish their batch and commit; returns a restorer."""
    import signal

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handler(signum, frame):
        log_event(log, "stop requested", signal=signal.Signals(signum).name)
        stop.set()

    for s in previous:
        signal.signal(s, _handler)
    return lambda: [signal.signal(s, h) for s, h in previous.items()]
