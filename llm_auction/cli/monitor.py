"""``llm-auction monitor`` and ``llm-auction report``: what the warehouse says, for people and scripts.

The monitor refreshes a table per policy version (queries, ads per answer, CTR, revenue and
reward per query, format errors; with rollouts, each version's share of users and its state)
plus the last rollout decisions and the last minutes of revenue; ``--once --json`` prints one
snapshot for scripts. The report writes PNG plots and a markdown summary.

With a broker configured (``LLMA_KAFKA_BOOTSTRAP``) the monitor also shows each consumer group's
lag per topic: records written and not yet committed, from the group's committed offsets and the
partitions' true ends (:mod:`llm_auction.infra.lag`). A service slower than its input shows a lag
that grows from one refresh to the next (back-pressure: Kafka holds the backlog, nothing is
dropped); a service that caught up shows 0.

Shares and states come from the rollout decisions recorded in ClickHouse
(``llm_auction.rollout_decisions``, migration 0007; docs/rollout.md), read like the metrics: the
latest decision is the routing in force. A person's ``llm-auction policy`` decision appears once
the rollout controller has recorded it (it records the topic's events the table lacks).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

from llm_auction.cli.args import add_out
from llm_auction.schemas.topics import CLICKS, QUERIES, RESPONSES

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
ROLLOUT_COLUMNS = [("share", "share", "{:.0%}"), ("state", "state", "{}")]
DECISION_COLUMNS = [
    ("time", "decided at (UTC)", "{}"),
    ("version", "version", "{}"),
    ("state", "state", "{}"),
    ("share", "share", "{:.0%}"),
    ("stable_version", "stable", "{}"),
    ("arms", "queries per arm", "{}"),
    ("decided_by", "by", "{}"),
    ("reason", "reason", "{}"),
]
DECISION_TEXT = frozenset({"version", "state", "stable_version", "arms", "decided_by", "reason"})  # left-aligned
# How a version stands after the latest decision (docs/rollout.md): "stable" (serves everyone
# not in a canary), "canary"/"paused" (serves its share), "rolled_back" (a candidate the last
# decision about it rolled back), "inconclusive" (a candidate taken out when its canary's budget
# ended without a significant difference), "retired" (no longer served: a former stable, or a
# candidate replaced before any decision).
ENDED = ("rolled_back", "inconclusive")  # decisions that take a candidate out, named as its state
SERVING = ("canary", "paused")
LAG_COLUMNS = [
    ("group", "group", "{}"),
    ("topic", "topic", "{}"),
    ("committed", "committed", "{:d}"),
    ("end", "end", "{:d}"),
    ("lag", "lag", "{:d}"),
]
# The services' groups and the topics they read (consumers/build.py), shown even before their first
# commit, when a service that is behind from the start has none; other groups come from the broker.
SERVICE_GROUPS = {"llma-responder": (QUERIES,), "llma-user-sim": (RESPONSES,), "llma-sink": (QUERIES, RESPONSES, CLICKS)}
REASON_CHARS = 70  # the table's reason column; --json has it whole
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
    p.add_argument("--decisions", type=int, default=5, help="how many recent rollout decisions to show (default 5)")
    p.add_argument("--no-lag", action="store_true", help="do not read consumer lag from the broker (shown by default when LLMA_KAFKA_BOOTSTRAP is set)")
    p.set_defaults(handler=_monitor)

    p = sub.add_parser("report", help="write PNG plots and a markdown summary of the warehouse", description="Write revenue-per-minute and CTR plots per policy version (PNG, the rollout decisions marked) and summary.md to --out.")
    add_out(p, "output folder")
    p.set_defaults(handler=_report)


def _fmt(v, spec: str) -> str:
    if v is None:
        return "-"
    try:
        return spec.format(int(v) if spec == "{:d}" else v)
    except (ValueError, TypeError):
        return str(v)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def render_table(rows: list[dict], columns, left: frozenset[str] = frozenset()) -> str:
    """A fixed-width text table; missing values show as '-'. The first column and those whose key
    is in ``left`` are left-aligned, the others right-aligned."""
    head = [title for _, title, _ in columns]
    body = [[_fmt(r.get(key), spec) for key, _, spec in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lefts = [i == 0 or key in left for i, (key, _, _) in enumerate(columns)]
    line = lambda cells: "  ".join(c.ljust(w) if lefts[i] else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def version_states(decisions: list[dict]) -> list[dict]:
    """Each version the decisions (oldest first) name, with its ``share`` of users and ``state``
    after the latest one; the stable version first, then the candidate, then the rest by name."""
    if not decisions:
        return []
    states: dict[str, str] = {}
    for d in decisions:
        states.setdefault(d["stable_version"], "retired")
        if d["candidate_version"]:
            states[d["candidate_version"]] = d["state"] if d["state"] in ENDED else "retired"
        if d["state"] == "promoted":
            states[d["stable_version"]] = "retired"  # marked stable below if it still is
    shares = dict.fromkeys(states, 0.0)
    last = decisions[-1]
    stable, candidate = last["stable_version"], last["candidate_version"]
    share = float(last["candidate_share"]) if candidate and last["state"] in SERVING else 0.0
    states[stable], shares[stable] = "stable", 1.0 - share
    if candidate and last["state"] in SERVING:
        states[candidate], shares[candidate] = last["state"], share
    order = [stable] + ([candidate] if candidate in states and candidate != stable else [])
    order += sorted(v for v in states if v not in order)
    return [{"policy_version": v, "share": shares[v], "state": states[v]} for v in order]


def decision_rows(decisions: list[dict]) -> list[dict]:
    """The decisions newest first, as the monitor shows them: ``version`` is the one decided about
    (the candidate; the new stable for a promotion), ``queries`` the arms' queries at the time."""
    out = []
    for d in reversed(decisions):
        queries = {v: int(e.get("queries") or 0) for v, e in (d.get("evidence") or {}).items()}
        out.append({
            "decided_at": d["decided_at"],
            "time": d["decided_at"].strftime("%Y-%m-%d %H:%M:%S"),
            "version": d["candidate_version"] or d["stable_version"],
            "state": d["state"],
            "share": 1.0 if d["state"] == "promoted" else d["candidate_share"],  # what the version got
            "stable_version": d["stable_version"],
            "queries": queries,
            "arms": " / ".join(f"{v} {n}" for v, n in queries.items()) or "-",
            "decided_by": d["decided_by"],
            "reason": d["reason"],
            "decision_id": d["decision_id"],
        })
    return out


def snapshot(client, minutes: int = 10, decisions: int = 5) -> dict:
    """Per-policy metrics (with ``share`` and ``state`` once a rollout was decided), revenue per
    minute, totals, and ``rollout``: ``versions`` (:func:`version_states`) and ``decisions``
    (the last ``decisions``, newest first; :func:`decision_rows`)."""
    from llm_auction.infra import warehouse

    policies = warehouse.revenue_by_policy(client)
    per_minute = warehouse.revenue_per_minute(client)[-minutes * max(1, len(policies)) :]
    history = warehouse.rollout_decisions(client)  # all of it: a version's state may date from any decision
    versions = version_states(history)
    if versions:
        by_version = {v["policy_version"]: v for v in versions}
        for p in policies:
            v = by_version.get(p["policy_version"], {})
            p["share"], p["state"] = v.get("share", 0.0), v.get("state", "-")
    rollout = {"versions": versions, "decisions": decision_rows(history[-decisions:] if decisions > 0 else [])}
    return {"policies": policies, "per_minute": per_minute, "totals": warehouse.totals(client), "rollout": rollout}


def render_snapshot(snap: dict) -> str:
    t = snap["totals"]
    head = f"queries {t.get('queries', 0)}  responses {t.get('responses', 0)}  clicks {t.get('clicks', 0)}  revenue {t.get('revenue', 0):.0f}"
    rollout = snap.get("rollout") or {}
    versions = rollout.get("versions") or []
    policy_columns = POLICY_COLUMNS[:1] + ROLLOUT_COLUMNS + POLICY_COLUMNS[1:] if versions else POLICY_COLUMNS
    parts = [head, "", "per policy version", render_table(snap["policies"], policy_columns)]
    if versions:
        serving = ", ".join(f"{v['policy_version']} {v['state']} {v['share']:.0%}" for v in versions if v["share"] > 0)
        idle = [v for v in versions if v["share"] == 0]
        parts += ["", "rollout: " + serving + ("  (not served: " + ", ".join(f"{v['policy_version']} {v['state']}" for v in idle) + ")" if idle else "")]
    if rollout.get("decisions"):
        rows = [{**d, "reason": _clip(d.get("reason") or "", REASON_CHARS)} for d in rollout["decisions"]]
        parts += ["", "last rollout decisions (newest first)", render_table(rows, DECISION_COLUMNS, left=DECISION_TEXT)]
    if snap["per_minute"]:
        parts += ["", "revenue per minute", render_table(snap["per_minute"], MINUTE_COLUMNS)]
    if snap.get("lag") is not None:
        parts += ["", "consumer lag (records written, not yet committed by the group)", render_table(snap["lag"], LAG_COLUMNS, left=frozenset({"topic"}))]
    elif snap.get("lag_error"):
        parts += ["", f"consumer lag: {snap['lag_error']}"]
    return "\n".join(parts)


class _Lag:
    """Consumer lag for the monitor: one reader kept across refreshes; a broker that cannot be
    reached gives a one-line reason in the snapshot instead of ending the monitor."""

    def __init__(self, enabled: bool):
        from llm_auction.schemas.settings import get_settings

        self.settings = get_settings()
        self.reader = None
        self.off = None if enabled and self.settings.kafka_bootstrap else ("turned off (--no-lag)" if not enabled else "LLMA_KAFKA_BOOTSTRAP is not set (the local broker lives inside the process that started it)")

    def add_to(self, snap: dict) -> dict:
        if self.off:
            snap["lag"], snap["lag_error"] = None, self.off
            return snap
        from llm_auction.infra.lag import LagReader

        try:
            if self.reader is None:
                self.reader = LagReader(self.settings)
            snap["lag"] = [r.as_dict() for r in self.reader.all_lag(SERVICE_GROUPS)]
        except Exception as e:  # noqa: BLE001 - the monitor keeps showing the warehouse; the next refresh retries
            self.close()
            snap["lag"], snap["lag_error"] = None, f"not read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        return snap

    def close(self) -> None:
        if self.reader is not None:
            try:
                self.reader.close()
            finally:
                self.reader = None


def _client():
    from llm_auction.infra.clickhouse import get_client
    from llm_auction.infra.ddl import migrate
    from llm_auction.schemas.settings import get_settings

    client = get_client(get_settings().resolved_clickhouse_url())
    migrate(client)
    return client


def _monitor(args) -> int:
    client = _client()
    lag = _Lag(not args.no_lag)
    try:
        if args.once:
            snap = lag.add_to(snapshot(client, args.minutes, args.decisions))
            print(json.dumps(snap, default=str, indent=2) if args.json else render_snapshot(snap))
            return 0
        while True:
            print("\033[2J\033[H" + time.strftime("%H:%M:%S ") + render_snapshot(lag.add_to(snapshot(client, args.minutes, args.decisions))), flush=True)
            time.sleep(args.interval)
    finally:
        lag.close()


def write_report(client, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from llm_auction.infra import warehouse

    out.mkdir(parents=True, exist_ok=True)
    minutes = warehouse.revenue_per_minute(client)
    policies = warehouse.revenue_by_policy(client)
    decisions = warehouse.rollout_decisions(client)
    versions = sorted({m["policy_version"] for m in minutes})
    for metric, fname, ylabel in (("revenue", "revenue_per_minute.png", "revenue per minute"), ("ctr", "ctr_per_minute.png", "CTR")):
        fig, ax = plt.subplots(figsize=(8, 4))
        for v in versions:
            pts = [(m["minute"], m[metric]) for m in minutes if m["policy_version"] == v]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=v)
        for d in decisions:  # the rollout decisions, marked where they were taken
            color = {"promoted": "tab:green", "rolled_back": "tab:red", "inconclusive": "tab:orange"}.get(d["state"], "tab:gray")
            ax.axvline(d["decided_at"], color=color, linestyle="--", linewidth=1)
            ax.annotate(f"{d['state']} {d['candidate_version'] or d['stable_version']}", (d["decided_at"], 1.0), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color=color)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("minute (UTC)")
        stamps = [m["minute"] for m in minutes] + [d["decided_at"] for d in decisions]
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
