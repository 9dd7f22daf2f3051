"""The evaluation's report: ``eval.json`` (machine-readable), ``eval.md`` (the table and the figures) and PNGs.

``eval.json`` holds one object per mechanism (``mechanisms``: name, queries, every figure of
:data:`.eval_figures.MEANS` and ``ctr`` as {mean, ci95}, the paired difference against
``pretrained``), the property sweeps per version (``properties``: ``spearman_bid_itctr``, the
monotonicity and continuity curves, the incentives), and the run (``run``: options, served
pCTR, machine, date, command). ``eval.md`` is the Table-2 counterpart, the two Figure-4 plots
(``monotonicity.png``, ``continuity.png``) and what the numbers mean.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import eval_figures

# (figure, header, format) of the Markdown table
COLUMNS = (
    ("revenue_per_query", "revenue/q", "{:.2f}"), ("expected_revenue_per_query", "E[revenue]/q", "{:.2f}"), ("reward_per_query", "reward/q", "{:.1f}"),
    ("judge_expected_revenue_per_query", "judge E[rev]/q", "{:.2f}"), ("judge_reward_per_query", "judge reward/q", "{:.1f}"),
    ("ctr", "CTR", "{:.3f}"), ("ads_per_answer", "ads/answer", "{:.2f}"), ("format_error_rate", "format err", "{:.2f}"),
    ("generations_per_query", "generations/q", "{:.0f}"), ("generated_tokens_per_query", "tokens/q", "{:.0f}"), ("seconds_per_query", "s/q", "{:.2f}"),
)


def machine() -> str:
    """The machine in words: CPU model, cores, memory."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB"
    except (ValueError, OSError):
        return f"{cpu}, {os.cpu_count()} cores"


def build(rows, props: dict[str, Any], o, *, arms, served: str, settings) -> dict[str, Any]:
    """The report's JSON object; a mechanism that is a swept version carries its ``spearman_bid_itctr``."""
    mechanisms = eval_figures.table(rows, arms)
    swept = (props or {}).get("versions") or {}
    for m in mechanisms:
        version = m["name"].removeprefix("policy:")
        if version in swept and "spearman_bid_itctr" in swept[version]:
            m["spearman_bid_itctr"] = swept[version]["spearman_bid_itctr"]
    return {
        "mechanisms": mechanisms,
        "properties": props,
        "run": {
            "options": asdict(o), "arms": list(arms), "served_pctr": served, "adllm_backend": settings.adllm_backend,
            "adllm_model": str(settings.resolved_adllm_model()), "candidates_k": settings.candidates_k, "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": "llm-auction " + " ".join(sys.argv[1:]) if sys.argv[1:] else "llm-auction eval",
        },
    }


def _cell(v: dict[str, Any], fmt: str) -> str:
    mean, (lo, hi) = v["mean"], v["ci95"]
    if mean != mean:  # nan
        return "-"
    return f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def markdown(report: dict[str, Any]) -> str:
    """``eval.md``: the table, the paired differences, the property figures, the run."""
    run, mechs = report["run"], report["mechanisms"]
    lines = [
        "# Mechanisms side by side", "",
        f"`{run['command']}` on {run['machine']}, {run['date']}; {run['options']['queries']} {run['options']['split']} queries, "
        f"the same queries and bids for every mechanism (seed {run['options']['seed']}); Ad-LLM `{Path(run['adllm_model']).name}` "
        f"({run['adllm_backend']}); mosaic and slot use the served pCTR `{run['served_pctr']}`.", "",
        "Means per query with 95% bootstrap intervals over queries. `reward` is Eq. 8 with the training simulator's exact click "
        "probabilities; `judge` columns rescore the same answers with the held-out judge, which trained nothing. "
        "The slot auction's revenue uses its second prices.", "",
        "| mechanism | queries | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for m in mechs:
        lines.append(f"| {m['name']} | {m['queries']} | " + " | ".join(_cell(m[k], f) for k, _, f in COLUMNS) + " |")
    diffs = [m for m in mechs if "vs_pretrained" in m]
    if diffs:
        lines += ["", "Paired difference against `pretrained` (same queries and bids):", "",
                  "| mechanism | " + " | ".join(eval_figures.PAIRED) + " |", "|---|" + "---:|" * len(eval_figures.PAIRED)]
        for m in diffs:
            lines.append(f"| {m['name']} | " + " | ".join(_cell(m["vs_pretrained"][k], "{:+.2f}") for k in eval_figures.PAIRED) + " |")
    props = report.get("properties") or {}
    if props.get("versions"):
        lines += ["", "## Mechanism properties (section 5.4)", "",
                  f"Monotonicity: per query one ad, its bid at {props['bid_levels']}; continuity: query `{props['query_id']}`, ad "
                  f"`{props['ad_id']}`, bids {props['continuity_bids'][0]}..{props['continuity_bids'][-1]}. ITCTR from the training simulator.", "",
                  "| version | Spearman(bid, ITCTR) | largest jump (smoothed) | utility-maximizer best bid (value "
                  f"{run['options']['value']:g}) | gain over truthful | IR when truthful |", "|---|---:|---:|---:|---:|---|"]
        for v, p in props["versions"].items():
            inc = (p.get("incentives") or {}).get("utility_maximizer") or {}
            rho = p.get("spearman_bid_itctr")
            lines.append(f"| {v} | {'-' if rho is None or rho != rho else f'{rho:.3f}'} | {p.get('max_jump', float('nan')):.4f} | "
                         f"{inc.get('best_bid', '-')} | {inc.get('gain_over_truthful', float('nan')):.3f} | {inc.get('individually_rational_when_truthful', '-')} |")
        lines += ["", "![ITCTR against the bid level](monotonicity.png)", "", "![ITCTR against the bid, with the slot auction's step](continuity.png)"]
    return "\n".join(lines) + "\n"


def plots(props: dict[str, Any], out: Path) -> list[Path]:
    """Figure 4(a) (mean ITCTR per bid level, one line per version) and 4(b) (the continuity curve,
    raw and smoothed, with the slot auction's step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    versions = props.get("versions") or {}
    if any("monotonicity" in v for v in versions.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, v in versions.items():
            if "monotonicity" in v:
                ax.plot(v["monotonicity"]["bid"], v["monotonicity"]["itctr"], marker="o", label=f"{name} (rho {v['spearman_bid_itctr']:.2f})")
        ax.set(xlabel="bid", ylabel="mean ITCTR", title="Monotonicity: ITCTR against the bid level")
        written.append(_save(plt, fig, ax, out / "monotonicity.png"))
    if any("continuity" in v for v in versions.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, v in versions.items():
            if "continuity" in v:
                c = v["continuity"]
                ax.plot(c["bid"], c["itctr"], alpha=0.35, label=f"{name} raw")
                ax.plot(c["bid"], c["smoothed"], label=f"{name} smoothed")
        if props.get("slot_step"):
            ax.step(props["slot_step"]["bid"], props["slot_step"]["itctr"], where="post", linestyle="--", label="slot auction")
        ax.set(xlabel="bid", ylabel="ITCTR", title="Continuity: one query, one ad")
        written.append(_save(plt, fig, ax, out / "continuity.png"))
    return written


def _save(plt, fig, ax, path: Path) -> Path:
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(report: dict[str, Any], rows, props: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    plots(props, out)
    (out / "eval.md").write_text(markdown(report))


__all__ = ["COLUMNS", "build", "machine", "markdown", "plots", "write"]
