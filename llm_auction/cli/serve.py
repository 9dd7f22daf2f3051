"""``llm-auction serve SERVICE`` and ``llm-auction replay``: the pipeline's processes.

Each service is one long-running process against ``LLMA_KAFKA_BOOTSTRAP`` (start a local broker
with ``llm-auction broker``); SIGTERM/SIGINT finish the current batch, commit and exit 0. For a
one-process run of the whole loop on embedded defaults, use ``llm-auction demo``.
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

from llm_auction.cli.args import add_setting_arguments, settings_from_args
from llm_auction.cli.bootstrap import kafka_bootstrap as _bootstrap

# Each service's flags, generated from the settings they override (flag -> Settings field).
SETTING_FLAGS = {
    "responder": {"--backend": "adllm_backend", "--model": "adllm_model", "--batch-size": "adllm_batch_size", "--candidates": "candidates_k",
                  "--policy-version": "policy_version"},
    "user-sim": {"--backend": "user_sim_backend"},
    "sink": {"--batch-size": "sink_batch_size", "--max-wait": "sink_batch_max_wait_s"},
    "rollout-controller": {"--interval": "rollout_check_interval_s"},
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run one streaming service (responder, user-sim, sink, rollout-controller, stream-app, trainer) against LLMA_KAFKA_BOOTSTRAP",
        description="Run one service of the loop until SIGTERM/SIGINT (finishes its batch and commits first).",
    )
    ss = p.add_subparsers(dest="service", metavar="SERVICE", required=True)

    r = ss.add_parser("responder", help="queries -> Ad-LLM answers with validated allocations (auction.responses)")
    add_setting_arguments(r, SETTING_FLAGS["responder"])
    _limits(r)
    r.set_defaults(handler=_serve, service_name="responder")

    u = ss.add_parser("user-sim", help="responses -> one click decision per exposed ad (auction.clicks)")
    add_setting_arguments(u, SETTING_FLAGS["user-sim"])
    _limits(u)
    u.set_defaults(handler=_serve, service_name="user-sim")

    k = ss.add_parser("sink", help="queries, responses and clicks -> ClickHouse (LLMA_CLICKHOUSE_URL), batched")
    add_setting_arguments(k, SETTING_FLAGS["sink"])
    _limits(k)
    k.set_defaults(handler=_serve, service_name="sink")

    c = ss.add_parser("rollout-controller", help="canary announced policy versions, promote or roll back on measured reward (auction.rollout)",
                      description="Canary every announced policy version and decide from ClickHouse with the LLMA_ROLLOUT_* rule (docs/rollout.md).")
    add_setting_arguments(c, SETTING_FLAGS["rollout-controller"])
    c.set_defaults(handler=_rollout_controller, service_name="rollout-controller")

    a = ss.add_parser("stream-app", help="responses x clicks -> impressions (ClickHouse), pCTR retraining -> auction.pctr-versions (Faust)")
    _stream_app_arguments(a)

    t = ss.add_parser("trainer", help="IRPO epochs the stream app requests (auction.irpo-requests) -> policy versions (auction.policy-versions)",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=_trainer_description())
    _trainer_arguments(t)

    p = sub.add_parser(
        "replay",
        help="stream the world's queries with fresh bids onto auction.queries",
        description="Replay test (or train) queries from the world folder, with freshly drawn bids, at a target rate or as fast as possible.",
    )
    p.add_argument("--world", type=Path, help="world folder (default: <data_dir>/world; generated if missing)")
    p.add_argument("--split", choices=["test", "train", "all"], default="test", help="which queries (default test)")
    p.add_argument("--limit", type=int, help="stop after this many queries")
    p.add_argument("--rate", type=float, help="queries per second (default: as fast as possible)")
    p.add_argument("--loop", action="store_true", help="start over at the end (forever unless --limit)")
    p.add_argument("--keep-bids", action="store_true", help="send the world's stored bids instead of fresh ones")
    p.add_argument("--seed", type=int, help="seed for fresh bids (default: LLMA_SEED)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_replay)


def _stream_app_arguments(p: argparse.ArgumentParser) -> None:
    from llm_auction.cli.stream_app import add_arguments  # argparse only; the app loads when run

    add_arguments(p)


def _trainer_arguments(p: argparse.ArgumentParser) -> None:
    from llm_auction.cli.trainer import add_arguments  # argparse only; torch loads when run

    add_arguments(p)


def _trainer_description() -> str:
    from llm_auction.cli import trainer

    return (trainer.__doc__ or "").split("\n\n", 1)[1]


def _limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-messages", type=int, help="exit after consuming this many messages")
    p.add_argument("--idle-exit", type=float, help="exit after this many seconds without a message")


def served_pctr(s, encoder=None):
    """The pCTR a responder's mechanism arms (``mosaic``, ``slot``) select and rank with: the
    registry's latest promoted version at start, opened on first use (a responder that never
    serves such an arm loads nothing); None without one, so a rollout to such an arm is refused."""
    from llm_auction.trainer.registry import ModelRegistry

    if ModelRegistry(s.resolved_registry_dir(), "pctr").latest() is None:
        return None
    opened = []

    def score(items):
        if not opened:
            from llm_auction.models.encoder import TextEncoder
            from llm_auction.trainer.reward import open_reward

            opened.append(open_reward("pctr", settings=s, encoder=encoder or TextEncoder()).score)
        return opened[0](items)

    return score


def _serve(args) -> int:
    from llm_auction.cli import CliError
    from llm_auction.consumers import build
    from llm_auction.consumers.service import DeliveryError, OutageError, install_signal_handlers
    from llm_auction.infra.kafka import make_producer
    from llm_auction.schemas.settings import get_settings

    if getattr(args, "candidates_k", None) == 0:
        args.candidates_k = None  # 0: every candidate (unset LLMA_CANDIDATES_K)
    s = settings_from_args(get_settings(), args, SETTING_FLAGS[args.service_name])
    bootstrap = _bootstrap(s)
    stop = threading.Event()
    install_signal_handlers(stop)
    producer = make_producer(s, bootstrap)
    name = args.service_name
    backend = control = None
    if name == "responder":
        from llm_auction.models.backends import open_backend
        from llm_auction.models.encoder import TextEncoder

        encoder = TextEncoder() if s.candidates_k else None
        backend = open_backend(s)
        control = build.responder_control(s, bootstrap, backend, producer).start()  # policy versions and rollouts (docs/rollout.md)
        svc = build.responder_service(s, bootstrap, producer, backend, build.candidate_picker(s, encoder), stop, control=control,
                                      score=served_pctr(s, encoder))
    elif name == "user-sim":
        from llm_auction.models.user_sim import make_user_simulator

        svc = build.user_sim_service(s, bootstrap, producer, make_user_simulator(s.user_sim_backend, seed=s.seed), stop)
    else:
        from llm_auction.infra.clickhouse import get_client
        from llm_auction.infra.ddl import migrate

        client = get_client(s.resolved_clickhouse_url())
        migrate(client)
        svc = build.sink_service(s, bootstrap, producer, client, stop)
    try:
        stats = svc.run(max_messages=args.max_messages, idle_timeout_s=args.idle_exit)
    except (DeliveryError, OutageError) as e:  # one line; the batch is uncommitted, so a restart replays it
        raise CliError(str(e)) from None
    finally:
        if control is not None:
            control.stop()
        producer.close()
        if backend is not None:
            backend.close()  # vLLM: stops the engine's processes
    print(json.dumps({"service": name, **dict(stats)}))
    return 0


def _rollout_controller(args) -> int:
    from llm_auction.consumers.rollout_controller import RolloutController
    from llm_auction.consumers.service import install_signal_handlers
    from llm_auction.infra.clickhouse import get_client
    from llm_auction.infra.ddl import migrate
    from llm_auction.infra.kafka import ensure_topics, make_producer
    from llm_auction.schemas.settings import get_settings

    s = settings_from_args(get_settings(), args, SETTING_FLAGS["rollout-controller"])
    bootstrap = _bootstrap(s)
    ensure_topics(s, bootstrap)
    stop = threading.Event()
    install_signal_handlers(stop)
    client = get_client(s.resolved_clickhouse_url())
    migrate(client)
    producer = make_producer(s, bootstrap)
    try:
        made = RolloutController(s, bootstrap, client, producer).start().run(stop)
    finally:
        producer.close()
        client.close()
    print(json.dumps({"service": "rollout-controller", "decisions": made}))
    return 0


def _replay(args) -> int:
    from llm_auction.consumers.service import install_signal_handlers
    from llm_auction.infra.kafka import make_producer
    from llm_auction.producers.replay import ReplayConfig, replay
    from llm_auction.producers.world import World, WorldSpec, generate_world
    from llm_auction.schemas.settings import get_settings

    s = get_settings()
    bootstrap = _bootstrap(s)
    root = args.world or s.data_dir / "world"
    if args.world is None and not (root / "manifest.json").exists():
        generate_world(root, WorldSpec(seed=s.seed), progress=not args.quiet)
    world = World(root)
    cfg = ReplayConfig(
        split=None if args.split == "all" else args.split, limit=args.limit, rate=args.rate, loop=args.loop,
        fresh_bids=not args.keep_bids, seed=s.seed if args.seed is None else args.seed,
    )
    stop = threading.Event()
    install_signal_handlers(stop)
    producer = make_producer(s, bootstrap)
    try:
        sent = replay(world, producer, cfg, progress=not args.quiet, stop=stop)
    finally:
        producer.close()
    print(json.dumps({"sent": sent, "split": args.split}))
    return 0
