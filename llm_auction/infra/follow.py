"""One topic follower: a thread that reads topics whole, from their beginning, then follows them.

For a reader that must see every record of some topics whatever the consumer groups do: a
responder's control topics (every responder reads all of them; the local broker keeps no
compacted topics, so the whole history is the state), and the watchers of the soak and the fault
tests, which compare what the topics hold with what the services stored. It reads through
:func:`~llm_auction.infra.kafka.open_reader` (no group, nothing committed) and hands each record,
undecoded, to a handler on its own thread, so decoding and what a record means stay with the
caller.

Records reach the handler in the order of ``topics`` within each poll (then by partition, then by
offset), always under :attr:`TopicFollower.lock`, which a reader of the handler's state takes for
a consistent view. What the thread has read is public: :attr:`~TopicFollower.ends` (per
partition, the offset after the last record read), :attr:`~TopicFollower.last_new` and
:attr:`~TopicFollower.caught_up`; :meth:`~TopicFollower.wait_offset` and
:meth:`~TopicFollower.wait_until` wait for a record or for what the handler made of one (an event
id it recorded). An error stops the thread, is logged, and is kept in
:attr:`~TopicFollower.error` for the owner (also returned by :meth:`~TopicFollower.stop`): never
lost, never raised into a thread that did not ask.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from llm_auction.logs import log_event

if TYPE_CHECKING:
    from llm_auction.schemas.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[Any], None]  # called with each kafka-python ConsumerRecord


class TopicFollower:
    """Reads ``topics`` from the beginning on a daemon thread and calls ``handler(record)`` per record.

    Building one connects to nothing; :meth:`start` opens the reader on the new thread. Use as a
    context manager, or pair :meth:`start` with :meth:`stop`.
    """

    def __init__(self, settings: Settings, bootstrap: str | None, topics: Sequence[str], handler: Handler, *, name: str = "topic-follower", poll_timeout_ms: int = 200):
        self.settings, self.bootstrap = settings, bootstrap
        self.topics = list(topics)
        self.handler, self.name, self.poll_timeout_ms = handler, name, poll_timeout_ms
        self.lock = threading.Lock()  # held while the handler runs
        self.ends: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset after the last record read
        self.last_new = time.monotonic()  # when the last record was read (the start, before any)
        self.caught_up = threading.Event()  # set once a poll found nothing more to read
        self.error: BaseException | None = None  # what stopped the thread, if anything did
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread -----------------------------------------------------------------------------
    def start(self) -> "TopicFollower":
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> BaseException | None:
        """End the thread and wait up to ``timeout_s`` for it; returns :attr:`error` (None: it ran clean)."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.error

    def __enter__(self) -> "TopicFollower":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        from llm_auction.infra.kafka import open_reader

        rank = {t: i for i, t in enumerate(self.topics)}
        try:
            consumer = open_reader(self.settings, self.bootstrap, self.topics)
            try:
                log_event(log, "following topics from the beginning", follower=self.name, topics=self.topics)
                while not self._halt.is_set():
                    polled = consumer.poll(timeout_ms=self.poll_timeout_ms)
                    if not polled:
                        self.caught_up.set()
                        continue
                    with self.lock:
                        for tp in sorted(polled, key=lambda tp: (rank.get(tp.topic, len(rank)), tp.partition)):
                            for rec in polled[tp]:
                                self.handler(rec)
                                self.ends[(rec.topic, rec.partition)] = max(self.ends.get((rec.topic, rec.partition), 0), rec.offset + 1)
                                self.last_new = time.monotonic()
            finally:
                consumer.close()
        except BaseException as e:  # noqa: BLE001 - kept for the owner (stop() returns it), never lost
            self.error = e
            log_event(log, "topic follower stopped by an error", logging.ERROR, follower=self.name, error=f"{type(e).__name__}: {e}"[:500])

    # -- what it has read -----------------------------------------------------------------------
    def quiet_for(self, seconds: float) -> bool:
        """True when no record arrived in the last ``seconds``."""
        return time.monotonic() - self.last_new >= seconds

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 30.0, poll_s: float = 0.05) -> bool:
        """Wait until ``predicate()`` holds (e.g. an event id the handler recorded is there); False on
        timeout or when the thread stopped with an error. The predicate runs in the caller's thread,
        without :attr:`lock`."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline or self.error is not None:
                return False
            time.sleep(poll_s)
        return True

    def wait_offset(self, topic: str, partition: int, offset: int, timeout_s: float = 30.0) -> bool:
        """Wait until the record at ``offset`` of ``topic``/``partition`` was read (and handled); False on timeout or error."""
        return self.wait_until(lambda: self.ends.get((topic, partition), 0) > offset, timeout_s)


__all__ = ["Handler", "TopicFollower"]
