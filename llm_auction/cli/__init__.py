"""``llm-auction``: one command, a subcommand per job.

Each command group lives in its own module of this package and exposes ``register(subparsers)``;
heavy imports (torch, Kafka clients) happen inside the handlers so ``--help`` stays instant.
Expected failures (bad input, a missing broker) raise :class:`CliError` or ``SchemaError`` and
print one line, exit code 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llm_auction import __version__

# Modules registering subcommands, in the order `--help` lists them.
COMMAND_MODULES = ["basic", "world", "loop", "eval", "broker", "topics", "serve", "monitor", "warehouse", "pctr", "irpo", "policy", "stream_app", "models"]


class CliError(Exception):
    """An expected, user-facing failure: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-auction",
        description=(
            "LLM-Auction as a streaming feedback loop: replay queries through Kafka to an Ad-LLM, "
            "simulate clicks, land everything in ClickHouse, retrain pCTR, and run IRPO epochs by hand "
            "(`irpo run-epoch`) or when the stream app requests them (`serve trainer`). "
            "Settings come from LLMA_* environment variables (`llm-auction settings`)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"llm-auction {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"llm_auction.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from llm_auction.infra.errors import InfraError
    from llm_auction.logs import setup_logging
    from llm_auction.models.adllm import BackendUnavailable
    from llm_auction.schemas import SchemaError
    from llm_auction.schemas.settings import get_settings

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        settings = get_settings()
        setup_logging(settings.log_level, settings.log_format)
        return int(args.handler(args) or 0)
    except (CliError, InfraError, SchemaError, BackendUnavailable, FileNotFoundError, ValueError) as e:
        print(f"llm-auction: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llm-auction: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
