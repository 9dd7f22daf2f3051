"""``llm-auction eval``: parse the flags, run :mod:`llm_auction.learning.mechanism_eval`, print the table.

The flags are generated from :class:`~llm_auction.learning.mechanism_eval.EvalOptions`;
``--quick`` starts from :meth:`EvalOptions.quick`'s preset. stdout holds the Markdown report
(or ``--json``) alone: progress goes to the log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

from llm_auction.cli.args import add_config_arguments, add_out, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from llm_auction.learning.mechanism_eval import EvalOptions

    p = sub.add_parser(
        "eval",
        help="compare mechanisms (pretrained, MOSAIC best-of-N, slot auction, LLM-Auction versions) through the real pipeline",
        description=(
            "Serve the same test queries with the same bids under every mechanism through broker -> responder -> user "
            "simulator -> sink, recompute revenue, reward, CTR, ads, format errors and cost per query from ClickHouse "
            "with 95% bootstrap intervals (and under a held-out judge), sweep bids for monotonicity and continuity, and "
            "write eval.md, eval.json and PNGs. A stage already done in --out is reused (resumable). Refuses a policy "
            "version trained on the queries it would be graded on."
        ),
    )
    p.add_argument("--quick", action="store_true", help="a few queries per stage (about a minute with the tiny model); flags given still win")
    add_config_arguments(p, EvalOptions)
    p.add_argument("--backend", choices=["vllm", "transformers"], help="Ad-LLM backend (default: LLMA_ADLLM_BACKEND)")
    p.add_argument("--model", type=Path, help="Ad-LLM model folder (default: LLMA_ADLLM_MODEL, else <LLMA_DATA_DIR>/models/smollm2, prepared if missing)")
    p.add_argument("--json", action="store_true", help="print eval.json instead of the Markdown report")
    add_out(p, "report folder (eval.md, eval.json, PNGs, stages/)", "reports/eval")
    p.set_defaults(handler=main)


def main(args) -> int:
    from llm_auction.learning.mechanism_eval import EvalOptions, run_eval
    from llm_auction.learning.eval_report import markdown
    from llm_auction.schemas.settings import get_settings

    try:
        o = config_from_args(args, EvalOptions, EvalOptions.quick if args.quick else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = get_settings().with_overrides(**{k: v for k, v in (("adllm_backend", args.backend), ("adllm_model", args.model)) if v is not None})
    out = args.out or Path("reports") / "eval"
    try:
        with contextlib.redirect_stdout(sys.stderr):
            report = run_eval(s, o, out)
    except ValueError as e:  # bad input: a refused policy, another run's folder, an empty split
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=float) if args.json else markdown(report))
    return 0


__all__ = ["main", "register"]
