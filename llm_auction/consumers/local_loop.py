"""The whole loop in one process: responder, user simulator and sink in threads.

The embedded ClickHouse (chdb) admits one process per folder, so the demo, the pipeline
benchmark and the end-to-end tests run every service in one process, each on its own thread
with its own Kafka consumer (a consumer is not thread-safe; the producer is). ``wait_drained``
knows the loop is quiet by counting what each hop consumed and produced: Tansu's end offsets
can lag for batched writes, so offsets are not used.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tqdm import tqdm

from .service import StreamService, run_in_threads


def is_drained(n_queries: int, responder: Mapping[str, float], user_sim: Mapping[str, float], sink: Mapping[str, float], extra_sink_events: int = 0) -> bool:
    """The loop's quiet rule, from the services' counters (``stats``): every query answered or
    dead-lettered, every response's clicks decided, and every query, response and click stored."""
    return (
        responder["produced"] + responder["dead_lettered"] >= n_queries
        and user_sim["consumed"] >= responder["produced"]
        and sink["consumed"] >= n_queries + responder["produced"] + user_sim["produced"] + extra_sink_events
    )


class _Since:
    """A service's counters counted from a baseline (what ``wait_drained`` reads: ``.stats``)."""

    def __init__(self, service: StreamService, base: Mapping[str, float]):
        self.service, self.base = service, base

    @property
    def stats(self) -> Counter:
        return Counter({k: v - self.base.get(k, 0) for k, v in self.service.stats.items()})


@dataclass
class LocalLoop:
    responder: StreamService
    user_sim: StreamService
    sink: StreamService
    stop: threading.Event
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def services(self) -> list[StreamService]:
        return [self.responder, self.user_sim, self.sink]

    def start(self) -> "LocalLoop":
        self.threads = run_in_threads(self.services)
        return self

    def _alive(self) -> None:
        dead = [t.name for t in self.threads if not t.is_alive()]
        if dead and not self.stop.is_set():
            raise RuntimeError(f"service thread(s) stopped unexpectedly: {', '.join(dead)} (see the log above)")

    def _wait(self, cond: Callable[[], bool], timeout_s: float, what: str, progress: Callable[[], int] | None = None, total: int | None = None, show: bool = False) -> None:
        deadline = time.monotonic() + timeout_s
        with tqdm(total=total, desc=what, unit="q", disable=None if show else True, mininterval=1.0) as bar:  # None: hidden off a terminal
            while not cond():
                self._alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
                if progress is not None:
                    bar.update(progress() - bar.n)
                time.sleep(0.1)
            if progress is not None:
                bar.update(progress() - bar.n)

    def baseline(self) -> tuple[dict, dict, dict]:
        """The services' counters now, for :meth:`wait_drained` ``since=`` (a run that replays more than once)."""
        return tuple(dict(svc.stats) for svc in self.services)  # type: ignore[return-value]

    def wait_drained(self, n_queries: int, extra_sink_events: int = 0, timeout_s: float = 900, show_progress: bool = False,
                     since: tuple[dict, dict, dict] | None = None) -> None:
        """Block until ``n_queries`` were answered, their clicks decided, and everything stored;
        with ``since`` (a :meth:`baseline` taken before the replay), counting from it."""
        r, u, k = (_Since(svc, base) for svc, base in zip(self.services, since)) if since else self.services
        self._wait(lambda: r.stats["produced"] + r.stats["dead_lettered"] >= n_queries, timeout_s, "answering", lambda: r.stats["produced"], n_queries, show_progress)
        self._wait(lambda: u.stats["consumed"] >= r.stats["produced"], 120, "click decisions")
        self._wait(lambda: is_drained(n_queries, r.stats, u.stats, k.stats, extra_sink_events), 120, "the warehouse sink")

    def close(self, timeout_s: float = 30) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=timeout_s)
