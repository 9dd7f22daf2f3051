"""Traffic replay: the world's queries, with fresh bids, onto ``auction.queries``.

Each replayed query gets a new id (``<world query id>.<run id>.<n>``) so that replaying the same
world twice is two sets of traffic, not duplicates, and fresh bids drawn from a seeded RNG (the
paper redraws bids every epoch so the policy learns to read them rather than memorize them).
Pacing is by schedule (query i is due at start + i / rate), so a slow broker call does not
accumulate drift.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from tqdm import tqdm

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


def replay(world: World, producer, cfg: ReplayConfig, progress: bool = True, stop: threading.Event | None = None) -> int:
    """Send the replay to Kafka; returns the number of queries sent (all flushed)."""
    total = cfg.limit if cfg.limit is not None else (None if cfg.loop else sum(1 for _ in world.records(cfg.split)))
    start = time.monotonic()
    sent = 0
    with tqdm(total=total, desc=f"replay {cfg.split or 'all'}", unit="q", disable=None if progress else True) as bar:  # None: hidden off a terminal
        for ev in replay_events(world, cfg):
            if stop is not None and stop.is_set():
                break
            if cfg.rate:
                due = start + sent / cfg.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            producer.send(QUERIES, key=ev.query_id.encode("utf-8"), value=encode(ev))
            sent += 1
            bar.update(1)
    producer.flush()
    return sent
