"""``llm-auction loop`` and ``llm-auction demo``: parse the flags, run :mod:`llm_auction.learning.loop`, print.

The flags are generated from :class:`~llm_auction.learning.loop.LoopOptions` (its field help
texts); ``demo`` is the same command on :meth:`LoopOptions.demo`'s preset, then the monitor's
snapshot. stdout holds the table (or ``--json``) alone: the loop's progress goes to the log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from llm_auction.cli.args import add_config_arguments, add_out, config_from_args

COLUMNS = [
    ("epoch", "epoch", "{:d}"), ("version", "version", "{}"), ("role", "role", "{}"), ("decision", "decision", "{}"), ("reward_model", "trained on", "{}"),
    ("queries", "queries", "{:d}"), ("revenue_per_query", "revenue/q", "{:.2f}"), ("expected_revenue_per_query", "E[rev]/q", "{:.2f}"), ("reward_per_query", "reward/q", "{:.1f}"),
    ("ctr", "CTR", "{:.3f}"), ("ads_per_answer", "ads/answer", "{:.2f}"), ("format_error_rate", "format err", "{:.1%}"),
]


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo",
        help="run the main job end to end on the embedded defaults: serve, learn one IRPO epoch, canary, decide",
        description=(
            "Generate the world, prepare the CPU model, start the local broker and embedded ClickHouse; the base policy "
            "answers test queries through responder -> user simulator -> sink; pCTR retrains on them; one IRPO epoch trains "
            "a new policy version, which the rollout controller canaries and promotes or rolls back. Prints both versions "
            "side by side and the monitor table. `llm-auction loop` is the same with more epochs; --epochs 0 only serves."
        ),
    )
    add_loop_arguments(d, demo=True)
    d.set_defaults(handler=lambda args: main(args, demo=True))
    p = sub.add_parser(
        "loop",
        help="Algorithm 1 on the embedded defaults: serve, retrain pCTR, IRPO epoch, canary, decide; N epochs",
        description=(
            "Run the learning loop through the real pipeline in one process (local broker, embedded ClickHouse, "
            "SmolLM2 in vLLM): the base policy serves test queries; then each epoch retrains pCTR on the warehouse's "
            "impressions, runs an IRPO epoch from the stable policy, announces the new version, and lets the rollout "
            "controller canary it on test traffic until it promotes or rolls it back. Prints a table per epoch "
            "(both arms of each canary side by side) and writes the report's PNGs."
        ),
    )
    add_loop_arguments(p)
    p.set_defaults(handler=lambda args: main(args, demo=False))


def add_loop_arguments(p: argparse.ArgumentParser, demo: bool = False) -> None:
    from llm_auction.learning.loop import LoopOptions

    add_config_arguments(p, LoopOptions, asdict(LoopOptions.demo()) if demo else None)
    p.add_argument("--backend", choices=["vllm", "transformers"], help="Ad-LLM backend (default: LLMA_ADLLM_BACKEND)")
    p.add_argument("--model", type=Path, help="Ad-LLM model folder (default: LLMA_ADLLM_MODEL, else <LLMA_DATA_DIR>/models/smollm2, prepared if missing)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    add_out(p, "report folder (PNGs, summary.md)", "<LLMA_DATA_DIR>/reports/loop-<time>")


def main(args, demo: bool) -> int:
    from llm_auction.cli.monitor import render_snapshot, snapshot, write_report
    from llm_auction.learning import loop
    from llm_auction.schemas.settings import get_settings

    o = config_from_args(args, loop.LoopOptions, loop.LoopOptions.demo if demo else None)  # a bad value fails before anything starts
    s = get_settings().with_overrides(**{k: v for k, v in (("adllm_backend", args.backend), ("adllm_model", args.model)) if v is not None})
    report = args.out or (None if demo else s.data_dir / "reports" / time.strftime("loop-%Y%m%d-%H%M%S"))

    def finish(p):
        if report is not None:
            loop.log_step("report written", summary=str(write_report(p.client, report)))
        return snapshot(p.client) if demo else None

    with contextlib.redirect_stdout(sys.stderr):  # TRL's trainer prints its log lines
        rows, snap = loop.run(s, o, finish=finish)
    if args.json:
        print(json.dumps({"epochs": [asdict(r) for r in rows], **({"snapshot": snap} if snap else {})}, default=str, indent=2))
    else:
        print(render_rows(rows) + ("\n\n" + render_snapshot(snap) if snap else ""))
    return 0


def render_rows(rows) -> str:
    from llm_auction.cli.monitor import render_table

    flat = [{"epoch": r.epoch, "version": r.version, "role": r.role, "decision": r.decision, "reward_model": r.reward_model, **r.metrics} for r in rows]
    return render_table(flat, COLUMNS, left=frozenset({"version", "role", "decision"}))
