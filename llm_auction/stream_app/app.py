"""The Faust stream app: responses x clicks -> impressions -> ClickHouse -> pCTR retraining.

::

    auction.responses --agent--+                                  +--> stream_impressions (ClickHouse)
                               +--> ImpressionJoiner --> joined --+
    auction.clicks ----agent---+   (pending, early:     (table,      retrain timer (executor thread):
                                    Faust tables)        flushed)    window -> retrain_and_publish
                                                                     -> registry -> auction.pctr-versions

State. The join's two mappings (pending responses, early clicks) are Faust tables; so is
``joined``, the buffer of impressions not yet in ClickHouse. All three are changelog-backed
(``<app_id>-<table>-changelog``), kept in memory (``store="memory://"``) and rebuilt from the
changelog when a worker starts. Faust flushes its producer (the changelog writes) before it
commits source offsets, so an event whose offset is committed has its effect in the changelog:
a restart loses no impression. The flush inserts the buffer into ClickHouse, then deletes the
keys; a crash between the two re-inserts rows whose key is already there, and the table
(ReplacingMergeTree, read FINAL) counts them once. Tables are keyed by ``query_id`` and written
with ``use_partitioner=True``: the changelog partition of a key is the producer's partition for
it, the same as the source topics' (same key, same partition count), which also lets the timers
(expiry, flush) change tables outside of stream iteration.

Retraining. A timer (``LLMA_PCTR_RETRAIN_INTERVAL_S``) counts the persisted impressions; when at
least ``LLMA_PCTR_MIN_NEW_IMPRESSIONS`` arrived since the last trained window (the watermark, kept
in ``stream_pctr_versions`` with each announced version, so a restarted worker knows it), it
reads the most recent ``LLMA_PCTR_TRAIN_WINDOW`` impressions and runs
:func:`~llm_auction.trainer.pctr_publish.retrain_and_publish` in a thread pool
(``loop.run_in_executor``), so the agents keep consuming while it trains. The version is then
announced on ``auction.pctr-versions`` unless its (deterministic) event id was already announced,
and the announcement is recorded. When clicks carry the simulator's ``click_probability``, the
version's metrics include the oracle comparison (``oracle_auc``, ``calibration_ratio``,
``truth_corr``).

Faust on Tansu (docs/design.md): ``broker_session_timeout=6`` (a group join waits half of it), no
``exactly_once`` (transactions fail), ``topic_replication_factor=1``, no web server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_auction.logs import log_event
from llm_auction.schemas import ClickEvent, DeadLetter, ResponseEvent, decode, encode
from llm_auction.schemas.codec import SchemaError
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import CLICKS, DEAD_LETTER, PCTR_VERSIONS, RESPONSES, TOPICS
from llm_auction.stream_app.join import ImpressionJoiner, Impression
from llm_auction.stream_app.store import StreamStore

log = logging.getLogger("llm_auction.stream_app")


@dataclass(frozen=True)
class StreamTopics:
    responses: str = RESPONSES
    clicks: str = CLICKS
    pctr_versions: str = PCTR_VERSIONS
    dead_letter: str = DEAD_LETTER


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


class Retrainer:
    """The synchronous half of retraining (runs in an executor thread)."""

    def __init__(self, settings: Settings, store: StreamStore, registry, pctr_config=None, encoder=None, encoder_cache: Path | None = None):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.pctr_config = pctr_config
        self._encoder = encoder
        self.encoder_cache = encoder_cache

    @property
    def encoder(self):
        if self._encoder is None:
            from llm_auction.models.encoder import TextEncoder

            self._encoder = TextEncoder()
            if self.encoder_cache is not None:
                self._encoder.load_cache(self.encoder_cache)
        return self._encoder

    def train(self, df, impressions_total: int):
        from llm_auction.trainer.pctr_fit import PctrConfig
        from llm_auction.trainer.pctr_publish import retrain_and_publish

        s = self.settings
        config = self.pctr_config or PctrConfig(seed=s.seed, progress=False)
        return retrain_and_publish(
            df, self.registry, self.encoder, config, min_auc=s.pctr_min_auc, promote_margin=s.pctr_promote_margin,
            extra={"source": "stream_app", "app_id": self.store.app_id, "impressions_total": int(impressions_total)},
            encoder_cache=self.encoder_cache,
        )


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


def create_app(
    settings: Settings,
    bootstrap: str,
    *,
    app_id: str | None = None,
    topics: StreamTopics | None = None,
    partitions: int | None = None,
    clickhouse_url: str | None = None,
    client: Any = None,
    registry_dir: str | Path | None = None,
    pctr_config: Any = None,
    encoder: Any = None,
):
    """Build the Faust app (not started). Returns the ``faust.App``; its ``stream_ctx`` attribute holds
    the stats, the store and the joiner (for tests and the CLI).

    ``partitions``: of the responses and clicks topics (default: the project's spec), which the
    tables must match. ``client``: a ClickHouse client to use instead of opening
    ``clickhouse_url`` (default ``settings.resolved_stream_clickhouse_url()``).
    """
    import faust

    from llm_auction.infra.clickhouse import get_client
    from llm_auction.infra.ddl import migrate
    from llm_auction.trainer.registry import ModelRegistry

    s = settings
    app_id = app_id or s.stream_app_id
    topics = topics or StreamTopics()
    n_parts = int(partitions or TOPICS[RESPONSES].partitions)
    if client is None:
        client = get_client(clickhouse_url or s.resolved_stream_clickhouse_url())
    migrate(client)
    store = StreamStore(client, app_id)
    registry = ModelRegistry(Path(registry_dir) if registry_dir else (s.registry_dir or s.data_dir / "registry"), "pctr")
    retrainer = Retrainer(s, store, registry, pctr_config, encoder, s.data_dir / "pctr" / "encoder-cache.npz")

    app = faust.App(
        app_id,
        broker=_broker_url(bootstrap),
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        topic_replication_factor=1,
        topic_partitions=n_parts,
        broker_session_timeout=s.kafka_session_timeout_ms / 1000.0,
        broker_heartbeat_interval=min(3.0, s.kafka_session_timeout_ms / 3000.0),
        broker_commit_interval=1.0,
        # Tansu reports a partition's end offset as the last *batch*'s base offset + 1, so a table
        # recovering from a changelog written in multi-record batches stops short and loses the
        # last records (measured: 10 records in one batch -> end offset 1). One record per batch
        # keeps end offsets exact; on Apache Kafka raise LLMA_STREAM_PRODUCER_MAX_BATCH_SIZE.
        producer_max_batch_size=s.stream_producer_max_batch_size,
        value_serializer="raw",
        key_serializer="raw",
        processing_guarantee="at_least_once",
    )

    def table(name: str):
        schema = faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")
        return app.Table(name, default=None, partitions=n_parts, schema=schema, use_partitioner=True)

    pending = table("pending-responses")
    early = table("early-clicks")
    joined = table("joined-impressions")  # query_id -> [impression dict]: not yet in ClickHouse
    joiner = ImpressionJoiner(pending, early, max_wait_s=s.stream_join_max_wait_s)
    responses_topic = app.topic(topics.responses, value_serializer="raw", key_type=str, key_serializer="raw")
    clicks_topic = app.topic(topics.clicks, value_serializer="raw", key_type=str, key_serializer="raw")
    versions_topic = app.topic(topics.pctr_versions, value_serializer="raw", key_serializer="raw", partitions=1)
    dlq_topic = app.topic(topics.dead_letter, value_serializer="raw", key_serializer="raw", partitions=1)

    stats = StreamStats()
    io_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-clickhouse")
    train_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pctr-retrain")
    flush_lock = asyncio.Lock()
    runtime: dict[str, Any] = {"buffered": 0, "watermark": None, "retraining": False, "started": False}

    def ready() -> bool:
        rec = app.tables.recovery
        return rec.completed.is_set() and not rec.in_recovery and not app.rebalancing

    async def io(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(io_pool, fn, *args)

    async def dead_letter(topic: str, value: bytes, error: str, event) -> None:
        stats.bad += 1
        msg = getattr(event, "message", None)
        dl = DeadLetter(
            source_topic=topic, partition=getattr(msg, "partition", None), offset=getattr(msg, "offset", None),
            payload=(value or b"").decode("utf-8", errors="replace")[:100_000], error=error[:2000] or "unknown", consumer=app_id,
        )
        log_event(log, "stream_app: dead letter", logging.WARNING, topic=topic, error=error[:200])
        await dlq_topic.send(key=topic, value=encode(dl))

    async def flush() -> int:
        """Insert the buffered impressions, then drop them from the buffer table."""
        async with flush_lock:
            keys = list(joined.keys())
            if not keys:
                runtime["buffered"] = 0
                return 0
            rows = [r for k in keys for r in (joined.get(k) or [])]
            await io(store.insert_impressions, rows)
            for k in keys:
                joined.pop(k, None)
            stats.persisted += len(rows)
            runtime["buffered"] = sum(len(v or []) for v in joined.values())
            log_event(log, "stream_app: impressions persisted", logging.DEBUG, rows=len(rows))
            return len(rows)

    def started() -> None:
        """Once, when the tables are restored (first event or first ready tick): what came back."""
        if not runtime["started"]:
            runtime["started"] = True
            runtime["buffered"] = stats.restored_buffer = sum(len(v or []) for v in joined.values())
            stats.pending_at_start, stats.early_clicks_at_start = len(pending), len(early)
            log_event(log, "stream_app: ready", pending=len(pending), early_clicks=len(early), restored_buffer=stats.restored_buffer)

    async def emit(rows: list[Impression]) -> None:
        if not rows:
            return
        by_query: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_query[r.query_id].append(r.to_dict())
        for qid, items in by_query.items():
            joined[qid] = (joined.get(qid) or []) + items
        stats.joined += len(rows)
        runtime["buffered"] += len(rows)
        if runtime["buffered"] >= s.stream_flush_rows:
            await flush()  # awaited in the agent: the buffer stays bounded (backpressure)

    async def decoded(event, model, topic: str):
        """The event's payload as ``model``, or None after dead-lettering it with the reason."""
        started()
        try:
            return decode(event.value, model)
        except SchemaError as e:
            await dead_letter(topic, event.value, str(e), event)
            return None

    @app.agent(responses_topic, name="responses")
    async def on_responses(stream):
        async for event in stream.events():
            resp = await decoded(event, ResponseEvent, topics.responses)
            if resp is not None:
                stats.responses += 1
                await emit(joiner.add_response(resp, time.time()))

    @app.agent(clicks_topic, name="clicks")
    async def on_clicks(stream):
        async for event in stream.events():
            click = await decoded(event, ClickEvent, topics.clicks)
            if click is not None:
                stats.clicks += 1
                await emit(joiner.add_click(click, time.time()))

    @app.timer(max(0.2, min(1.0, s.stream_join_max_wait_s / 4)), name="join-expiry")
    async def expire_tick():
        if ready():
            await emit(joiner.expire(time.time()))

    @app.timer(s.stream_flush_interval_s, name="impressions-flush")
    async def flush_tick():
        if not ready():
            return
        started()
        await flush()

    @app.timer(s.pctr_retrain_interval_s, name="pctr-retrain", on_leader=True)  # one retrainer per app, not per worker
    async def retrain_tick():
        if not ready() or runtime["retraining"]:
            return
        runtime["retraining"] = True
        try:
            await maybe_retrain()
        except Exception as e:  # noqa: BLE001 - a failed retrain must not stop the join
            log_event(log, "stream_app: retrain failed", logging.ERROR, error=f"{type(e).__name__}: {e}"[:500])
        finally:
            runtime["retraining"] = False

    async def maybe_retrain() -> None:
        total = await io(store.count_impressions)
        if runtime["watermark"] is None:
            runtime["watermark"] = await io(store.watermark)
        new = total - runtime["watermark"]
        log_event(
            log, "stream_app: status", impressions=total, watermark=runtime["watermark"], new=new, responses=stats.responses, clicks=stats.clicks,
            joined=stats.joined, persisted=stats.persisted, pending=len(pending), early_clicks=len(early), bad=stats.bad,
        )
        if new < s.pctr_min_new_impressions:
            return
        df = await io(store.window, s.pctr_train_window)
        loop = asyncio.get_running_loop()
        manifest = await loop.run_in_executor(train_pool, retrainer.train, df, total)
        stats.retrains += 1
        runtime["watermark"] = total
        event = manifest.to_event()
        if await io(store.announced, event.event_id):
            stats.skipped_announcements.append(manifest.version)
            log_event(log, "stream_app: version already announced", version=manifest.version, event_id=event.event_id)
            return
        fut = await versions_topic.send(key=manifest.version, value=encode(event))
        await fut  # acknowledged by the broker before it is recorded as announced
        await io(store.record_announcement, event.event_id, manifest.version, manifest.sha256, manifest.promoted, total, len(df))
        stats.announced.append(manifest.version)
        m = manifest.metrics
        log_event(
            log, "stream_app: pctr version announced", version=manifest.version, promoted=manifest.promoted, auc=m.get("auc"),
            oracle_auc=m.get("oracle_auc"), calibration_ratio=m.get("calibration_ratio"), rows=len(df), impressions_total=total,
        )

    app.stream_ctx = {"stats": stats, "store": store, "joiner": joiner, "registry": registry, "tables": (pending, early, joined), "flush": flush}
    return app


def run_worker(app, loglevel: str = "INFO") -> int:
    """Run the app's Faust worker in this thread until SIGTERM/SIGINT (graceful stop)."""
    from faust.worker import Worker

    worker = Worker(app, loglevel=loglevel, quiet=True, override_logging=False, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0)
    return 0
