"""``llm-auction demo``: the main job on the embedded defaults.

Today it generates the world and scores one answer per paper example against fresh bids; the
streaming loop (local broker, responder, user simulator, ClickHouse) joins it as it lands.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on the embedded defaults")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: LLMA_SEED)")
    p.set_defaults(handler=_demo)


def _demo(args) -> int:
    import logging

    from llm_auction.auction import allocate, reward
    from llm_auction.logs import log_event
    from llm_auction.producers.world import World, WorldSpec, generate_world
    from llm_auction.schemas.settings import get_settings

    log = logging.getLogger("llm_auction.demo")
    s = get_settings()
    root = s.data_dir / "world"
    seed = s.seed if args.seed is None else args.seed
    log_event(log, "generating the synthetic world", out=str(root), seed=seed)
    manifest = generate_world(root, WorldSpec(seed=seed))
    world = World(root)
    rec = next(world.records("test"))
    q = world.event(rec)
    ads = q.candidates[:2]
    answer = f"A helpful answer to '{q.query}'. Consider @{ads[0].title}@[{ads[0].ad_id}] for this."
    alloc = allocate(answer, q.candidates)
    out = {
        "world": {k: manifest[k] for k in ("n_ads", "n_categories", "n_users", "n_queries", "n_train", "n_test")},
        "example": {
            "query": q.query,
            "answer": answer,
            "exposed": list(alloc.exposed),
            "format_error": alloc.format_error,
            "bid": ads[0].bid,
            "reward_at_pctr_0.1": reward(alloc, q.bids(), 0.1),
        },
    }
    print(json.dumps(out, indent=2))
    return 0
