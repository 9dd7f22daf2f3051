"""``llm-auction stream-app`` (also ``llm-auction serve stream-app``): the Faust stream app.

Joins ``auction.responses`` and ``auction.clicks`` into impressions, persists them in ClickHouse
(``llm_auction.stream_impressions``, through ``LLMA_STREAM_CLICKHOUSE_URL``, default
``LLMA_CLICKHOUSE_URL``), retrains the pCTR model on a timer and announces versions on
``auction.pctr-versions``; with ``LLMA_IRPO_TRIGGER_ENABLED`` it also requests IRPO epochs on
``auction.irpo-requests`` for ``llm-auction serve trainer``. Runs against ``LLMA_KAFKA_BOOTSTRAP``
until SIGTERM/SIGINT, then prints its counters as one JSON line. With the embedded ClickHouse (chdb) the stream app needs a data
folder no other process has open: give it its own ``LLMA_STREAM_CLICKHOUSE_URL`` beside a sink.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app-id", help="Faust application id: consumer group and changelog prefix (default: LLMA_STREAM_APP_ID)")
    p.add_argument("--responses-topic", help="responses topic (default: auction.responses)")
    p.add_argument("--clicks-topic", help="clicks topic, co-partitioned with the responses (default: auction.clicks)")
    p.add_argument("--versions-topic", help="where pCTR versions are announced (default: auction.pctr-versions)")
    p.add_argument("--dead-letter-topic", help="where undecodable events go (default: auction.dead-letter)")
    p.add_argument("--rollout-topic", help="rollout decisions the IRPO trigger reads for the stable policy (default: auction.rollout)")
    p.add_argument("--irpo-requests-topic", help="where the IRPO trigger sends epoch requests, and reads back its earlier ones (default: auction.irpo-requests)")
    p.add_argument("--partitions", type=int, help="partitions of the responses/clicks topics (default: the project's topic spec)")
    p.add_argument("--registry", help="model registry root (default: LLMA_REGISTRY_DIR, else <LLMA_DATA_DIR>/registry)")
    p.add_argument("--holdout", type=float, default=None, help="share of queries held out to evaluate each retrain (default 0.1)")
    p.add_argument("--epochs", type=int, default=None, help="max epochs per retrain (default 8, early stopping)")
    p.add_argument("--patience", type=int, default=None, help="epochs without holdout improvement before stopping early (default 2; small windows learn slowly: try 5)")
    p.set_defaults(handler=run)


def pctr_config(settings, args):
    """The retrain's PctrConfig, built with the overrides so that its checks run on them.

    Setting fields after construction skipped ``PctrConfig.__post_init__``: ``--holdout 1.5``
    surfaced minutes later as a failed retrain on every tick. A refused value raises
    ``ValueError`` now (one line, exit code 2).
    """
    from llm_auction.trainer.pctr_fit import PctrConfig

    if args.patience is not None and args.patience < 0:
        raise ValueError(f"--patience must be 0 (never stop early) or more, got {args.patience}")
    given = {"holdout_fraction": args.holdout, "epochs": args.epochs, "early_stop_patience": args.patience}
    return PctrConfig(seed=settings.seed, progress=False, **{k: v for k, v in given.items() if v is not None})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stream-app",
        help="run the Faust stream app (impressions join, pCTR retraining) until SIGTERM",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    add_arguments(p)


def run(args) -> int:
    from llm_auction.cli.bootstrap import kafka_bootstrap
    from llm_auction.infra.kafka import ensure_topics
    from llm_auction.schemas.settings import get_settings
    from llm_auction.stream_app.app import StreamTopics, create_app, run_worker

    s = get_settings()
    cfg = pctr_config(s, args)  # before anything connects: a bad value fails at once
    bootstrap = kafka_bootstrap(s)
    d = StreamTopics()
    topics = StreamTopics(
        responses=args.responses_topic or d.responses, clicks=args.clicks_topic or d.clicks,
        pctr_versions=args.versions_topic or d.pctr_versions, dead_letter=args.dead_letter_topic or d.dead_letter,
        rollout=args.rollout_topic or d.rollout, irpo_requests=args.irpo_requests_topic or d.irpo_requests,
    )
    if topics == d:
        ensure_topics(s, bootstrap)  # idempotent; the app's own changelog topics are Faust's
    app = create_app(s, bootstrap, app_id=args.app_id, topics=topics, partitions=args.partitions, registry_dir=args.registry, pctr_config=cfg)
    rc = run_worker(app, loglevel=s.log_level)
    stats = app.stream_ctx["stats"]
    print(json.dumps({"service": "stream-app", "app_id": app.conf.id, **asdict(stats)}), flush=True)
    return rc
