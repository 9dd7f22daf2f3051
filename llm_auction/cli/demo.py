"""``llm-auction demo``: the main job, end to end, on the embedded defaults: the loop learns once.

The preset of ``llm-auction loop`` (cli/loop.py) sized for a fresh 2-core machine: one process
generates the world, prepares the CPU Ad-LLM (SmolLM2-135M-Instruct in vLLM), starts the local
Kafka broker and the embedded ClickHouse, runs responder, user simulator and sink on threads; the
base policy answers test queries; pCTR retrains on what it earned; one IRPO epoch trains a new
policy version; the rollout controller canaries it on test traffic and promotes or rolls it back.
It prints both versions side by side, then the monitor's snapshot, saying what it does as it goes.
``--epochs 0`` only serves (the data leg alone).
"""

from __future__ import annotations

import argparse

from llm_auction.cli.loop import LoopOptions, add_loop_arguments

# Sized so a fresh clone finishes in under 15 minutes on 2 CPU cores (docs/benchmarks.md).
DEMO = LoopOptions(epochs=1, serve_queries=96, canary_queries=96, irpo_queries=12, samples=5, min_queries=16)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on the embedded defaults: serve, learn one IRPO epoch, canary, decide",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Generate the world, prepare the CPU model, start the local broker and embedded ClickHouse; the base policy "
            "answers test queries through responder -> user simulator -> sink; pCTR retrains on them; one IRPO epoch trains "
            "a new policy version, which the rollout controller canaries and promotes or rolls back. Prints both versions "
            "side by side and the monitor table. `llm-auction loop` is the same with more epochs."
        ),
    )
    add_loop_arguments(p, DEMO)
    p.set_defaults(handler=_demo)


def _demo(args) -> int:
    from llm_auction.cli.loop import main, options_from_args
    from llm_auction.schemas.settings import get_settings

    s = get_settings()
    return main(s, args, options_from_args(args, args.out), snapshot=True)
