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

Modules. This one builds the app (:func:`create_app`: Faust settings, topics, tables) and
assembles the parts, each in its own module: :mod:`.context` (``StreamContext``: what the parts
share, with the buffer's flush), :mod:`.agents` (the join's agents ``responses`` and ``clicks``,
timers ``join-expiry`` and ``impressions-flush``), :mod:`.retrain` (``Retrainer`` and the
``pctr-retrain`` timer), :mod:`.irpo_trigger` (the ``irpo-trigger`` timer, with
``LLMA_IRPO_TRIGGER_ENABLED``: epoch requests for the trainer service), both ticking through
:mod:`.timers` (one tick at a time, once the tables are ready); :mod:`.join` is the join itself and :mod:`.store` its ClickHouse tables.

Faust on Tansu (docs/design.md): ``broker_session_timeout=6`` (a group join waits half of it), no
``exactly_once`` (transactions fail), ``topic_replication_factor=1``, no web server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import RESPONSES, TOPICS
from llm_auction.stream_app import agents, irpo_trigger, retrain
from llm_auction.stream_app.context import StreamContext, StreamStats, StreamTopics
from llm_auction.stream_app.join import ImpressionJoiner
from llm_auction.stream_app.retrain import Retrainer
from llm_auction.stream_app.store import StreamStore

__all__ = ["Retrainer", "StreamContext", "StreamStats", "StreamTopics", "create_app", "run_worker"]


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


def _table(app, name: str, partitions: int):
    """A changelog-backed Faust table keyed by query_id, partitioned as the source topics are."""
    import faust

    schema = faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")
    return app.Table(name, default=None, partitions=partitions, schema=schema, use_partitioner=True)


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
    registry = ModelRegistry(Path(registry_dir) if registry_dir else s.resolved_registry_dir(), "pctr")
    retrainer = Retrainer(s, store, registry, pctr_config, encoder, s.data_dir / "pctr" / "encoder-cache.npz")

    (s.data_dir / "faust").mkdir(parents=True, exist_ok=True)  # Faust creates only the last level of its datadir
    app = faust.App(
        app_id,
        broker=_broker_url(bootstrap),
        store="memory://",
        # Faust's own folder (table metadata); its default, "<app id>-data", lands in the working directory
        datadir=str(s.data_dir / "faust" / app_id),
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

    pending = _table(app, "pending-responses", n_parts)
    early = _table(app, "early-clicks", n_parts)
    joined = _table(app, "joined-impressions", n_parts)  # query_id -> [impression dict]: not yet in ClickHouse
    ctx = StreamContext(
        app=app, settings=s, topics=topics, store=store, pending=pending, early=early, joined=joined,
        joiner=ImpressionJoiner(pending, early, max_wait_s=s.stream_join_max_wait_s),
        responses_topic=app.topic(topics.responses, value_serializer="raw", key_type=str, key_serializer="raw"),
        clicks_topic=app.topic(topics.clicks, value_serializer="raw", key_type=str, key_serializer="raw"),
        versions_topic=app.topic(topics.pctr_versions, value_serializer="raw", key_serializer="raw", partitions=1),
        dlq_topic=app.topic(topics.dead_letter, value_serializer="raw", key_serializer="raw", partitions=1),
    )
    agents.register(app, ctx)
    retrain.register(app, ctx, retrainer)
    trigger = irpo_trigger.register(app, ctx, registry, bootstrap) if s.irpo_trigger_enabled else None

    app.stream_ctx = {
        "stats": ctx.stats, "store": store, "joiner": ctx.joiner, "registry": registry, "tables": (pending, early, joined), "flush": ctx.flush, "context": ctx, "irpo_trigger": trigger,
    }
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
