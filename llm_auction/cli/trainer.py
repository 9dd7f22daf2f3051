"""``llm-auction serve trainer``: the trainer service, IRPO epochs the stream app requests.

Consumes ``auction.irpo-requests`` (sent by the stream app's IRPO trigger with
``LLMA_IRPO_TRIGGER_ENABLED``), runs one epoch per request from the requested parent policy version
scored by the requested pCTR version, with the same assembly and the same epoch flags as
``llm-auction irpo run-epoch``, publishes the version and announces it on
``auction.policy-versions``, where the rollout controller canaries it. A request already served
(its version's manifest records it) is announced again at most and never trained twice; the
request's offset is committed only after publication and announcement. Successive epochs move
``--offset`` by ``--queries`` per generation of the parent, so each sees new train queries.
Needs no warehouse (with embedded ClickHouse the stream app holds its folder). Runs until
SIGTERM/SIGINT (an epoch under way finishes first), then prints its counters as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import threading
from dataclasses import asdict


def add_arguments(p: argparse.ArgumentParser) -> None:
    from llm_auction.cli.irpo import add_epoch_arguments  # the epoch's flags, shared with `irpo run-epoch`

    add_epoch_arguments(p)
    p.add_argument("--requests-topic", help="epoch requests to serve (default: auction.irpo-requests)")
    p.add_argument("--versions-topic", help="where published versions are announced (default: auction.policy-versions)")
    p.add_argument("--dead-letter-topic", help="where unservable requests go, with the reason (default: auction.dead-letter)")
    p.add_argument("--group", help="consumer group whose committed offset marks the requests served (default: LLMA_TRAINER_GROUP)")
    p.add_argument("--max-requests", type=int, help="exit after serving this many requests")
    p.add_argument("--idle-exit", type=float, help="exit after this many seconds without a request")
    p.set_defaults(handler=run)


def run(args) -> int:
    from llm_auction.cli.args import registry_root
    from llm_auction.cli.bootstrap import kafka_bootstrap
    from llm_auction.cli.irpo import epoch_config, open_world
    from llm_auction.consumers.service import install_signal_handlers
    from llm_auction.infra.kafka import ensure_topics, make_producer
    from llm_auction.models.encoder import load_encoder
    from llm_auction.producers.versions import announce
    from llm_auction.schemas.settings import get_settings
    from llm_auction.schemas.topics import DEAD_LETTER, IRPO_REQUESTS, POLICY_VERSIONS
    from llm_auction.trainer.epoch_setup import generation, next_queries, run_configured_epoch
    from llm_auction.trainer.irpo import BASE_VERSION
    from llm_auction.trainer.registry import ModelRegistry
    from llm_auction.trainer.service import EpochTrainer

    s = get_settings()
    cfg = epoch_config(args, s)  # before anything connects: a bad value fails at once
    world = open_world(args, s)
    split_size = sum(1 for _ in world.records(cfg.split))
    registry = ModelRegistry(registry_root(args), "policy")
    bootstrap = kafka_bootstrap(s)
    topics = (args.requests_topic or IRPO_REQUESTS, args.versions_topic or POLICY_VERSIONS, args.dead_letter_topic or DEAD_LETTER)
    if topics == (IRPO_REQUESTS, POLICY_VERSIONS, DEAD_LETTER):
        ensure_topics(s, bootstrap)
    encoder = load_encoder()

    def run_epoch(request, data_window_extra):
        parent = None if request.parent_version == BASE_VERSION else request.parent_version
        return run_configured_epoch(
            next_queries(cfg, split_size, generation(registry, parent)), world=world, model=args.model or s.resolved_adllm_model(), registry=registry,
            parent=parent, pctr_version=request.pctr_version, encoder=encoder, settings=s, merge_lora=args.merge_lora, data_window_extra=data_window_extra,
        )

    stop = threading.Event()
    install_signal_handlers(stop)
    producer = make_producer(s, bootstrap)
    try:
        trainer = EpochTrainer(
            s, bootstrap, registry, run_epoch, producer, lambda m: announce(registry, m, producer, topics[1]),
            requests_topic=topics[0], dead_letter_topic=topics[2], group=args.group,
        )
        stats = trainer.run(stop, oracle=cfg.reward == "oracle", max_requests=args.max_requests, idle_exit_s=args.idle_exit)
    finally:
        producer.close()
    print(json.dumps({"service": "trainer", **asdict(stats)}), flush=True)
    return 0
