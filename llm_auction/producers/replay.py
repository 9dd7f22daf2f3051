"""Traffic replay: the world's queries, with fresh bids, onto ``auction.queries``.

Each replayed query gets a new id (``<world query id>.<run id>.<n>``) so that replaying the same
world twice is two sets of traffic, not duplicates, and fresh bids drawn from a seeded RNG (the
paper redraws bids every epoch so the policy learns to read them rather than memorize them).
Pacing is by schedule (query i is due at start + i / rate), so a slow broker call does not
accumulate drift.

Only what the broker acknowledged counts: the progress bar and the returned count follow the
producer's acknowledgements, not its ``send`` calls (``flush()`` returns on failed sends too).
Sends are kept in windows of ``window`` queries until acknowledged (:class:`~llm_auction.infra.delivery.Sends`,
shared with the service loop); a refused one is sent again, ``attempts`` in all, and after that
the replay stops with :class:`~llm_auction.infra.delivery.DeliveryError` saying how many queries
were lost and how many went through. At most ``max_windows`` windows wait at once, which bounds
the memory a fast replay holds against a slow broker.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from tqdm import tqdm

from llm_auction.infra.delivery import DeliveryError, Sends
from llm_auction.schemas import QueryEvent, encode
from llm_auction.schemas.topics import QUERIES

from .world import World, draw_bids


@dataclass(frozen=True)
class ReplayConfig:
    split: str | None = "test"
    limit: int | None = None
    rate: float | None = None  # queries per second; None: as fast as possible
    loop: bool = False
    fresh_bids: bool = True
    seed: int = 7
    run_id: str | None = None


def replay_events(world: World, cfg: ReplayConfig) -> Iterator[QueryEvent]:
    """The query events a replay sends, in order (finite unless ``loop`` without ``limit``)."""
    rng = random.Random(cfg.seed)
    run_id = cfg.run_id or uuid.uuid4().hex[:8]
    n = 0
    while True:
        sent_this_pass = 0
        for rec in world.records(cfg.split):
            if cfg.limit is not None and n >= cfg.limit:
                return
            bids = draw_bids(rng, len(world.ads)) if cfg.fresh_bids else None
            yield world.event(rec, bids=bids, query_id=f"{rec.query_id}.{run_id}.{n}")
            n += 1
            sent_this_pass += 1
        if not cfg.loop or sent_this_pass == 0:
            return


def replay(world: World, producer, cfg: ReplayConfig, progress: bool = True, stop: threading.Event | None = None,
           attempts: int = 3, window: int = 1000, max_windows: int = 8) -> int:
    """Send the replay to Kafka; returns the number of queries the broker acknowledged, which is
    every query handed to the producer: a query still refused after ``attempts`` sends raises
    :class:`DeliveryError` instead (one line; the CLI exits with code 2)."""
    total = cfg.limit if cfg.limit is not None else (None if cfg.loop else sum(1 for _ in world.records(cfg.split)))
    start = time.monotonic()
    handed = 0  # queries given to the producer
    settled = 0  # acknowledged queries of windows no longer kept
    waiting: deque[Sends] = deque()  # windows not yet all acknowledged, oldest first
    current = Sends()

    def acked() -> int:
        return settled + sum(w.n_acked for w in waiting) + current.n_acked

    def settle(wait: bool) -> None:
        nonlocal settled
        while waiting and waiting[0].settle(producer, attempts, "replay", "", wait=wait):
            settled += len(waiting.popleft().sends)

    with tqdm(total=total, desc=f"replay {cfg.split or 'all'}", unit="q", disable=None if progress else True) as bar:  # None: hidden off a terminal
        try:
            for ev in replay_events(world, cfg):
                if stop is not None and stop.is_set():
                    break
                if cfg.rate:
                    due = start + handed / cfg.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                current.add(producer, QUERIES, ev.query_id.encode("utf-8"), encode(ev))
                handed += 1
                if len(current.sends) >= window:
                    waiting.append(current)
                    current = Sends()
                    settle(wait=len(waiting) > max_windows)
                bar.update(acked() - bar.n)
            waiting.append(current)
            current = Sends()
            settle(wait=True)
        except DeliveryError as e:
            producer.flush()  # let the other sends finish, so the count below is final
            lost = handed - acked()
            raise DeliveryError(f"{e}; {lost} of {handed} queries were not delivered, {handed - lost} were") from None
        finally:
            bar.update(acked() - bar.n)
    return settled
