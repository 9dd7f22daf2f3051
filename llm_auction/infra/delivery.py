"""Producing records without losing them: keep each send until the broker acknowledged it.

kafka-python's ``send`` returns a future, and ``flush()`` returns once every send is *done*:
acknowledged, or failed after the producer's own retries. Counting or committing after a flush
therefore counts lost records as sent. :class:`Sends` keeps the records of one unit of work (a
service's batch, a window of a replay) beside their futures; :meth:`Sends.settle` says whether all
of them were acknowledged, produces the refused ones again (``attempts`` in all, counting the
first) and raises :class:`DeliveryError` past that. The service loop and the replay share it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llm_auction.infra.errors import InfraError

Send = tuple[str, bytes, bytes, "int | None"]  # topic, key, value, partition (None: the partitioner's)


class DeliveryError(InfraError):
    """Records the broker would not take after every attempt; what depended on them was not done
    (a service does not commit their batch). An :class:`InfraError`: the CLI prints one line."""


class Sends:
    """Records handed to a producer, each kept until the broker acknowledged it."""

    __slots__ = ("sends", "futures", "checked", "attempts", "acked_ms", "n_acked")

    def __init__(self) -> None:
        self.sends: list[Send] = []  # to produce again if refused
        self.futures: list[Any] = []  # kafka-python FutureRecordMetadata, index-aligned with sends
        self.checked = 0  # futures[:checked] are known to be done
        self.attempts = 1
        self.acked_ms = 0.0  # wall clock of the latest acknowledgement (producer callback, IO thread)
        self.n_acked = 0  # acknowledged sends so far (written by the producer's IO thread only)

    def add(self, producer, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        send = (topic, key, value, partition)
        self.sends.append(send)
        self.futures.append(self._produce(producer, send))

    def _produce(self, producer, send: Send) -> Any:
        topic, key, value, partition = send
        future = producer.send(topic, key=key, value=value, partition=partition)
        future.add_callback(self.acked)
        return future

    def acked(self, _metadata=None) -> None:
        self.acked_ms = time.time() * 1000.0  # the last callback to run leaves the latest time
        self.n_acked += 1

    def done(self) -> bool:
        """Whether every send so far has completed (acknowledged or failed)."""
        futures, i = self.futures, self.checked
        while i < len(futures) and futures[i].is_done:
            i += 1
        self.checked = i
        return i == len(futures)

    def settle(self, producer, attempts: int, who: str, consequence: str, wait: bool = False,
               on_retry: Callable[[int, list[str]], None] | None = None) -> bool:
        """True once every send is acknowledged; False while some are still on their way.

        A refused send is produced again, up to ``attempts`` in all (``on_retry(n, errors)`` is
        told first); after the last, :class:`DeliveryError` says ``who`` lost how many and why,
        then ``consequence``. ``wait``: flush the producer until the answer is known.
        """
        while True:
            if not self.done():
                if not wait:
                    return False
                producer.flush()  # afterwards every send so far is done (acked or failed)
                if not self.done():
                    return False
            failed = [i for i, f in enumerate(self.futures) if f.exception is not None]
            if not failed:
                return True
            errors = sorted({f"{type(self.futures[i].exception).__name__}: {self.futures[i].exception}"[:200] for i in failed})
            if self.attempts >= attempts:
                msg = f"{who}: {len(failed)} record(s) not accepted by the broker after {self.attempts} attempts ({'; '.join(errors)[:500]})"
                raise DeliveryError(f"{msg}; {consequence}" if consequence else msg)
            self.attempts += 1
            if on_retry is not None:
                on_retry(len(failed), errors)
            for i in failed:
                self.futures[i] = self._produce(producer, self.sends[i])
            self.checked = min(failed)
