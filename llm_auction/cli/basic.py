"""Small commands: ``version``, ``settings``, ``score``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print the package version")
    p.set_defaults(handler=_version)

    p = sub.add_parser("settings", help="show the effective LLMA_* settings", description="Show the effective settings (secrets hidden).")
    p.add_argument("--markdown", action="store_true", help="print the settings table of docs/settings.md (all variables and defaults) instead")
    p.set_defaults(handler=_settings)

    p = sub.add_parser(
        "score",
        help="allocation and reward of one answer for one query",
        description=(
            "Read an answer and a query event (JSON), and print as JSON the ad mentions, the allocation "
            "(exposed ads, format errors with reasons) and the Eq. 8 reward. pCTR is a constant (--pctr) "
            "or a JSON file {ad_id: probability} (--pctr-file)."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--answer", help="the answer text")
    src.add_argument("--answer-file", type=Path, help="file holding the answer text ('-' for stdin)")
    p.add_argument("--query", required=True, type=Path, help="QueryEvent JSON file ('-' for stdin)")
    pc = p.add_mutually_exclusive_group()
    pc.add_argument("--pctr", type=float, default=None, help="one pCTR for every exposed ad (default 0.1)")
    pc.add_argument("--pctr-file", type=Path, help="JSON object ad_id -> pCTR")
    p.add_argument("--lam", type=float, default=1.0, help="lambda, weight of the user-experience penalty (default 1)")
    p.set_defaults(handler=_score)


def _version(args) -> int:
    from llm_auction import __version__

    print(__version__)
    return 0


def _settings(args) -> int:
    from llm_auction.schemas.settings import get_settings, settings_markdown_table

    if args.markdown:
        print(settings_markdown_table())
    else:
        print(get_settings().model_dump_json(indent=2))
    return 0


def _read(path: Path) -> str:
    return sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")


def _score(args) -> int:
    from dataclasses import asdict

    from llm_auction.auction import expected_revenue, parse_ads, reward, user_experience_penalty, validate
    from llm_auction.cli import CliError
    from llm_auction.schemas import QueryEvent, decode

    if str(args.query) == "-" and str(args.answer_file) == "-":
        raise CliError("--query and --answer-file cannot both read stdin")
    query = decode(_read(args.query), QueryEvent)
    answer = args.answer if args.answer is not None else _read(args.answer_file)
    if args.pctr_file:
        try:
            pctr = json.loads(_read(args.pctr_file))
        except json.JSONDecodeError as e:
            raise CliError(f"--pctr-file: not JSON ({e.msg})") from None
        if not isinstance(pctr, dict):
            raise CliError("--pctr-file: expected a JSON object ad_id -> probability")
    else:
        pctr = 0.1 if args.pctr is None else args.pctr
    mentions = parse_ads(answer)
    alloc = validate(mentions, query.candidates)
    bids = query.bids()
    try:
        out = {
            "query_id": query.query_id,
            "mentions": [asdict(m) for m in mentions],
            "exposed": list(alloc.exposed),
            "n_ads": alloc.n_ads,
            "format_error": alloc.format_error,
            "reasons": list(alloc.reasons),
            "bids": {a: bids[a] for a in alloc.exposed},
            "expected_revenue": expected_revenue(alloc, bids, pctr),
            "penalty": user_experience_penalty(alloc),
            "reward": reward(alloc, bids, pctr, args.lam),
        }
    except KeyError as e:
        raise CliError(str(e).strip("'\"")) from None
    print(json.dumps(out, indent=2))
    return 0
