"""What the stream app's agents and timers share: topics, tables, stats, and the buffer's I/O.

:func:`~llm_auction.stream_app.app.create_app` builds one :class:`StreamContext` per app and hands
it to :mod:`~llm_auction.stream_app.agents` (the impressions join) and
:mod:`~llm_auction.stream_app.retrain` (the pCTR retraining timer). The methods here are the
steps both sides use: ``ready`` (tables recovered, no rebalance), ``io`` (a blocking ClickHouse
call on the app's one I/O thread), ``emit`` / ``flush`` (the ``joined`` buffer table and its
insert into ``stream_impressions``), ``decoded`` (decode or dead-letter).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from llm_auction.logs import log_event
from llm_auction.schemas import DeadLetter, decode, encode
from llm_auction.schemas.codec import SchemaError
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import CLICKS, DEAD_LETTER, IRPO_REQUESTS, PCTR_VERSIONS, RESPONSES, ROLLOUT
from llm_auction.stream_app.join import Impression, ImpressionJoiner
from llm_auction.stream_app.store import StreamStore

log = logging.getLogger("llm_auction.stream_app")


@dataclass(frozen=True)
class StreamTopics:
    responses: str = RESPONSES
    clicks: str = CLICKS
    pctr_versions: str = PCTR_VERSIONS
    dead_letter: str = DEAD_LETTER
    rollout: str = ROLLOUT  # read by the IRPO trigger (the stable policy, a running canary)
    irpo_requests: str = IRPO_REQUESTS  # the IRPO trigger's epoch requests


@dataclass
class StreamStats:
    responses: int = 0
    clicks: int = 0
    bad: int = 0
    joined: int = 0  # impressions produced by the join (this process)
    persisted: int = 0  # impression rows inserted into ClickHouse (this process; repeats included)
    restored_buffer: int = 0  # impressions in the buffer table when the worker became ready
    pending_at_start: int = 0  # responses waiting for clicks, restored from the changelog
    early_clicks_at_start: int = 0  # queries with clicks waiting for their response, restored
    retrains: int = 0
    announced: list[str] = field(default_factory=list)
    skipped_announcements: list[str] = field(default_factory=list)
    epoch_requests: list[str] = field(default_factory=list)  # ids of the IRPO epoch requests this process sent


@dataclass
class StreamContext:
    """One app's shared state. ``pending``, ``early`` and ``joined`` are the Faust tables (see
    :mod:`~llm_auction.stream_app.app`); ``buffered`` counts the impressions in ``joined``."""

    app: Any
    settings: Settings
    topics: StreamTopics
    store: StreamStore
    joiner: ImpressionJoiner
    pending: Any
    early: Any
    joined: Any
    responses_topic: Any
    clicks_topic: Any
    versions_topic: Any
    dlq_topic: Any
    stats: StreamStats = field(default_factory=StreamStats)
    io_pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-clickhouse"))
    flush_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    buffered: int = 0
    is_started: bool = False

    @property
    def app_id(self) -> str:
        return self.store.app_id

    def ready(self) -> bool:
        rec = self.app.tables.recovery
        return rec.completed.is_set() and not rec.in_recovery and not self.app.rebalancing

    async def io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn, *args)

    async def dead_letter(self, topic: str, value: bytes, error: str, event) -> None:
        self.stats.bad += 1
        msg = getattr(event, "message", None)
        dl = DeadLetter.of(value, error, source_topic=topic, partition=getattr(msg, "partition", None), offset=getattr(msg, "offset", None), consumer=self.app_id)
        log_event(log, "stream_app: dead letter", logging.WARNING, topic=topic, error=error[:200])
        await self.dlq_topic.send(key=topic, value=encode(dl))

    async def flush(self) -> int:
        """Insert the buffered impressions, then drop them from the buffer table."""
        joined = self.joined
        async with self.flush_lock:
            keys = list(joined.keys())
            if not keys:
                self.buffered = 0
                return 0
            rows = [r for k in keys for r in (joined.get(k) or [])]
            await self.io(self.store.insert_impressions, rows)
            for k in keys:
                joined.pop(k, None)
            self.stats.persisted += len(rows)
            self.buffered = sum(len(v or []) for v in joined.values())
            log_event(log, "stream_app: impressions persisted", logging.DEBUG, rows=len(rows))
            return len(rows)

    def started(self) -> None:
        """Once, when the tables are restored (first event or first ready tick): what came back."""
        if not self.is_started:
            self.is_started = True
            self.buffered = self.stats.restored_buffer = sum(len(v or []) for v in self.joined.values())
            self.stats.pending_at_start, self.stats.early_clicks_at_start = len(self.pending), len(self.early)
            log_event(log, "stream_app: ready", pending=len(self.pending), early_clicks=len(self.early), restored_buffer=self.stats.restored_buffer)

    async def emit(self, rows: list[Impression]) -> None:
        if not rows:
            return
        by_query: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_query[r.query_id].append(r.to_dict())
        for qid, items in by_query.items():
            self.joined[qid] = (self.joined.get(qid) or []) + items
        self.stats.joined += len(rows)
        self.buffered += len(rows)
        if self.buffered >= self.settings.stream_flush_rows:
            await self.flush()  # awaited in the agent: the buffer stays bounded (backpressure)

    async def decoded(self, event, model, topic: str):
        """The event's payload as ``model``, or None after dead-lettering it with the reason."""
        self.started()
        try:
            return decode(event.value, model)
        except SchemaError as e:
            await self.dead_letter(topic, event.value, str(e), event)
            return None
