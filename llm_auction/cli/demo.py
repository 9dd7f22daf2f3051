"""``llm-auction demo``: the main job, end to end, on the embedded defaults.

One process runs the whole loop (chdb admits one process per folder): it generates the world,
prepares the CPU Ad-LLM (SmolLM2-135M-Instruct, converted once from the GGUF wheel), starts the
local Kafka broker (unless LLMA_KAFKA_BOOTSTRAP is set) and the embedded ClickHouse (unless
LLMA_CLICKHOUSE_URL is set), runs responder, user simulator and sink on threads, replays test
queries with fresh bids, waits until every answer and click is in the warehouse, and prints the
monitor table. It says what it is doing as it goes.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on the embedded defaults",
        description=(
            "Generate the world, prepare the CPU model, start the local broker and embedded ClickHouse, "
            "replay test queries through responder -> user simulator -> sink, and print the monitor table."
        ),
    )
    p.add_argument(
        "--queries", type=int, default=128,
        help="test queries to replay (default 128: SmolLM2 in vLLM answers about one query a second on 2 CPU cores, "
        "so a fresh machine finishes well under 15 minutes; --backend transformers takes 5-19 s per query; "
        "with --backend stored thousands take seconds)",
    )
    p.add_argument("--backend", choices=["vllm", "transformers", "stored"], help="Ad-LLM backend (default: LLMA_ADLLM_BACKEND, vllm)")
    p.add_argument("--model", help="Ad-LLM model folder (default: <data_dir>/models/smollm2, prepared if missing)")
    p.add_argument("--json", action="store_true", help="print the final snapshot as JSON instead of a table")
    p.set_defaults(handler=_demo)


def _demo(args) -> int:
    import logging
    from pathlib import Path

    from llm_auction.consumers import build
    from llm_auction.logs import log_event
    from llm_auction.producers.world import World, WorldSpec, generate_world
    from llm_auction.schemas.settings import get_settings

    log = logging.getLogger("llm_auction.demo")
    upd = {k: v for k, v in (("adllm_backend", args.backend), ("adllm_model", Path(args.model) if args.model else None)) if v is not None}
    s = get_settings().with_overrides(**upd)  # validated: a bad value fails now, in one line
    step = lambda msg, **kw: log_event(log, msg, **kw)  # noqa: E731

    root = s.data_dir / "world"
    if not (root / "manifest.json").exists():
        step("1/6 generating the synthetic world", out=str(root))
        generate_world(root, WorldSpec(seed=s.seed))
    else:
        step("1/6 using the existing world", out=str(root))
    world = World(root)

    model_path = build.default_model_path(s)
    if s.adllm_backend != "stored" and s.adllm_model is None:
        from llm_auction.models.smollm2 import is_prepared, prepare_smollm2

        if not is_prepared(model_path):
            step("2/6 preparing SmolLM2-135M-Instruct (once)", out=str(model_path))
            prepare_smollm2(model_path)
    step("2/6 opening the Ad-LLM and the MiniLM encoder", backend=s.adllm_backend, model=str(model_path), candidates_k=s.candidates_k)
    backend = build.open_backend(s, model_path)
    try:
        return _run(args, s, world, backend, step)
    finally:
        backend.close()  # vLLM: stops the engine's processes


def _run(args, s, world, backend, step) -> int:
    from llm_auction.cli.monitor import render_snapshot, snapshot
    from llm_auction.consumers import build
    from llm_auction.infra.broker import broker_for
    from llm_auction.infra.clickhouse import get_client
    from llm_auction.infra.ddl import migrate
    from llm_auction.infra.kafka import ensure_topics, make_producer
    from llm_auction.models.encoder import TextEncoder
    from llm_auction.models.user_sim import make_user_simulator
    from llm_auction.producers.replay import ReplayConfig, replay

    encoder = TextEncoder()
    simulator = make_user_simulator(s.user_sim_backend, seed=s.seed, encoder=encoder)
    with broker_for(s) as bootstrap:
        step("3/6 Kafka is up", bootstrap=bootstrap, embedded=s.kafka_bootstrap is None)
        ensure_topics(s, bootstrap)
        url = s.resolved_clickhouse_url()
        client = get_client(url)
        migrate(client)
        step("4/6 ClickHouse is up and migrated", url=url.split("@")[-1])
        producer = make_producer(s, bootstrap)
        loop = build.local_loop(s, bootstrap, producer, backend, simulator, client, build.candidate_picker(s, encoder)).start()
        try:
            step("5/6 replaying test queries with fresh bids", queries=args.queries)
            sent = replay(world, producer, ReplayConfig(split="test", limit=args.queries, seed=s.seed))
            loop.wait_drained(sent, show_progress=True)
        finally:
            loop.close()
            producer.close()
        generation = {f"ad-llm.{k}": v for k, v in getattr(backend, "stats", {}).items()}
        if getattr(backend, "stats", None):
            generation["ad-llm.prefix_cache_hit_rate"] = round(backend.prefix_cache_hit_rate, 3)
        step("6/6 done", **{f"{svc.config.name}.{k}": v for svc in loop.services for k, v in svc.stats.items()}, **generation)
        snap = snapshot(client)
    print(json.dumps(snap, default=str, indent=2) if args.json else render_snapshot(snap))
    return 0
