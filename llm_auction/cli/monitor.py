"""``llm-auction monitor`` and ``llm-auction report``: what the warehouse says, for people and scripts.

The monitor refreshes a table per policy version (queries, ads per answer, CTR, revenue and
reward per query, format errors) plus the last minutes of revenue; ``--once --json`` prints one
snapshot for scripts. The report writes PNG plots and a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

from llm_auction.cli.args import add_out

POLICY_COLUMNS = [
    ("policy_version", "policy", "{}"),
    ("queries", "queries", "{:d}"),
    ("ads_per_answer", "ads/answer", "{:.2f}"),
    ("ctr", "CTR", "{:.1%}"),
    ("revenue_per_query", "revenue/q", "{:.2f}"),
    ("reward_per_query", "reward/q", "{:.2f}"),
    ("format_error_rate", "format err", "{:.1%}"),
    ("revenue", "revenue", "{:.0f}"),
]
MINUTE_COLUMNS = [
    ("minute", "minute", "{}"),
    ("policy_version", "policy", "{}"),
    ("queries", "queries", "{:d}"),
    ("clicks", "clicks", "{:d}"),
    ("revenue", "revenue", "{:.0f}"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="live table of revenue, CTR, ads per answer and format errors per policy version",
        description="Read the warehouse (LLMA_CLICKHOUSE_URL) and print per-policy metrics and revenue per minute, refreshed every few seconds.",
    )
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true", help="with --once: print the snapshot as JSON")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes (default 5)")
    p.add_argument("--minutes", type=int, default=10, help="how many recent minutes to show (default 10)")
    p.set_defaults(handler=_monitor)

    p = sub.add_parser("report", help="write PNG plots and a markdown summary of the warehouse", description="Write revenue-per-minute and CTR plots per policy version (PNG) and summary.md to --out.")
    add_out(p, "output folder")
    p.set_defaults(handler=_report)


def _fmt(v, spec: str) -> str:
    if v is None:
        return "-"
    try:
        return spec.format(int(v) if spec == "{:d}" else v)
    except (ValueError, TypeError):
        return str(v)


def render_table(rows: list[dict], columns) -> str:
    """A fixed-width text table; missing values show as '-'."""
    head = [title for _, title, _ in columns]
    body = [[_fmt(r.get(key), spec) for key, _, spec in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def snapshot(client, minutes: int = 10) -> dict:
    from llm_auction.infra import warehouse

    policies = warehouse.revenue_by_policy(client)
    per_minute = warehouse.revenue_per_minute(client)[-minutes * max(1, len(policies)) :]
    return {"policies": policies, "per_minute": per_minute, "totals": warehouse.totals(client)}


def render_snapshot(snap: dict) -> str:
    t = snap["totals"]
    head = f"queries {t.get('queries', 0)}  responses {t.get('responses', 0)}  clicks {t.get('clicks', 0)}  revenue {t.get('revenue', 0):.0f}"
    parts = [head, "", "per policy version", render_table(snap["policies"], POLICY_COLUMNS)]
    if snap["per_minute"]:
        parts += ["", "revenue per minute", render_table(snap["per_minute"], MINUTE_COLUMNS)]
    return "\n".join(parts)


def _client():
    from llm_auction.infra.clickhouse import get_client
    from llm_auction.infra.ddl import migrate
    from llm_auction.schemas.settings import get_settings

    client = get_client(get_settings().resolved_clickhouse_url())
    migrate(client)
    return client


def _monitor(args) -> int:
    client = _client()
    if args.once:
        snap = snapshot(client, args.minutes)
        print(json.dumps(snap, default=str, indent=2) if args.json else render_snapshot(snap))
        return 0
    while True:
        print("\033[2J\033[H" + time.strftime("%H:%M:%S ") + render_snapshot(snapshot(client, args.minutes)), flush=True)
        time.sleep(args.interval)


def write_report(client, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from llm_auction.infra import warehouse

    out.mkdir(parents=True, exist_ok=True)
    minutes = warehouse.revenue_per_minute(client)
    policies = warehouse.revenue_by_policy(client)
    versions = sorted({m["policy_version"] for m in minutes})
    for metric, fname, ylabel in (("revenue", "revenue_per_minute.png", "revenue per minute"), ("ctr", "ctr_per_minute.png", "CTR")):
        fig, ax = plt.subplots(figsize=(8, 4))
        for v in versions:
            pts = [(m["minute"], m[metric]) for m in minutes if m["policy_version"] == v]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=v)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("minute (UTC)")
        stamps = [m["minute"] for m in minutes]
        if stamps:  # a short run would otherwise auto-scale the axis to years
            span_min = int((max(stamps) - min(stamps)).total_seconds() // 60) + 2
            ax.xaxis.set_major_locator(mdates.MinuteLocator(interval=max(1, span_min // 8)))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
            ax.set_xlim(min(stamps) - timedelta(minutes=1), max(stamps) + timedelta(minutes=1))
        if versions:
            ax.legend(title="policy version")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
    summary = out / "summary.md"
    summary.write_text(
        "# LLM-Auction report\n\n## Per policy version\n\n```\n" + render_table(policies, POLICY_COLUMNS) + "\n```\n\n"
        "![revenue per minute](revenue_per_minute.png)\n\n![CTR per minute](ctr_per_minute.png)\n",
        encoding="utf-8",
    )
    return summary


def _report(args) -> int:
    print(write_report(_client(), args.out))
    return 0
