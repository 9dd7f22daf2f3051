"""``llm-auction warehouse migrate|status``: set up the ClickHouse warehouse and see what it holds.

Both read ``LLMA_CLICKHOUSE_URL`` (unset: the embedded engine under ``<LLMA_DATA_DIR>/clickhouse``)
unless ``--url`` is given, and print JSON. ``migrate`` is safe to run any number of times.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "warehouse",
        help="set up the ClickHouse warehouse (migrate) and show its state (status)",
        description="Apply the versioned warehouse DDL, or show applied migrations and row counts.",
    )
    wsub = p.add_subparsers(dest="warehouse_command", metavar="ACTION")
    m = wsub.add_parser(
        "migrate",
        help="apply pending migrations (idempotent)",
        description="Create database llm_auction, its event tables and views; applies only what is pending.",
    )
    m.add_argument("--url", default=None, help="ClickHouse URL (default: LLMA_CLICKHOUSE_URL, else the embedded engine)")
    m.set_defaults(handler=_migrate)
    s = wsub.add_parser(
        "status",
        help="applied and pending migrations, rows and parts per table",
        description="Print applied and pending migrations and, per event table, rows (deduplicated), rows stored and active parts.",
    )
    s.add_argument("--url", default=None, help="ClickHouse URL (default: LLMA_CLICKHOUSE_URL, else the embedded engine)")
    s.set_defaults(handler=_status)
    p.set_defaults(handler=lambda args: p.print_help() or 0)


def _client(args):
    from llm_auction.infra.clickhouse import get_client
    from llm_auction.schemas.settings import get_settings

    return get_client(args.url or get_settings().resolved_clickhouse_url())


def _url(args) -> str:
    from llm_auction.infra.clickhouse import parse_url
    from llm_auction.schemas.settings import get_settings

    return parse_url(args.url or get_settings().resolved_clickhouse_url()).safe()


def _migrate(args) -> int:
    from llm_auction.infra.ddl import applied, migrate

    client = _client(args)
    try:
        now = migrate(client)
        version = max(applied(client), default=0)
    finally:
        client.close()
    print(json.dumps({"url": _url(args), "applied_now": now, "schema_version": version}))
    return 0


def _status(args) -> int:
    from llm_auction.infra.ddl import applied, pending
    from llm_auction.infra.warehouse import table_counts

    client = _client(args)
    try:
        done = applied(client)
        out = {
            "url": _url(args),
            "server_version": client.server_version,
            "migrations": [{"version": v, "name": r["name"], "applied_at": r["applied_at"].isoformat()} for v, r in sorted(done.items())],
            "pending": pending(client),
            "tables": table_counts(client) if done else {},
        }
    finally:
        client.close()
    print(json.dumps(out, indent=2))
    return 0
