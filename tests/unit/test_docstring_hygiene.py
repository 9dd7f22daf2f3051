"""Docstrings and settings descriptions state contracts and reasons; figures live in the docs.

A date or a measured figure in the package goes stale the day the code or the machine changes,
and nobody reruns a docstring. Figures belong in docs/benchmarks.md (with the command, the
machine and the date) or the doc page of their part; the code names that section instead. Two
checks:

- no ``.py`` file under ``llm_auction/`` holds a date (``2026-12-05``): comments and docstrings
  included, since history goes to commit messages and the benchmarks page;
- no ``Settings`` field description holds a measured figure. The descriptions are copied into
  docs/settings.md, so they must read as the contract of the knob (what it does, its bounds, why
  its default) with a pointer to the figure, not the figure.
"""

from __future__ import annotations

import re
from pathlib import Path

from llm_auction.schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "llm_auction"

DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")

# A measured figure: a number with a unit of time, size, rate, speed-up or share, an approximate
# number ("~4"), a percentile, an AUC value, or the word "measured". Contract numbers carry no
# unit and stay legal: bounds ("1..100", "At most 280"), defaults ("`1`: one record per batch"),
# exit codes, topic counts. A description that needs a unit names the setting or the docs section
# instead (the default column of docs/settings.md shows the value).
_NUM = r"\d+(?:[.,]\d+)?"
FIGURE = re.compile(
    r"\bmeasured\b"
    rf"|~\s*{_NUM}"
    rf"|\b{_NUM}(?:\s*-\s*{_NUM})?x\b"  # 6x, 2.5x, 6-19x faster
    rf"|\b{_NUM}\s*%"
    rf"|\b{_NUM}\s*(?:ns|us|µs|ms|s|sec|seconds?|min|minutes?|h|hours?)\b"
    rf"|\b{_NUM}\s*(?:B|KB|KiB|MB|MiB|GB|GiB|TB)\b"
    rf"|\b{_NUM}\s*(?:tokens|rows|queries|q|answers|sentences|records|events)\s*/\s*s\b"
    rf"|\b{_NUM}\s*(?:cores?|threads? idle)\b"
    rf"|\b{_NUM}\s*(?:s\s*)?per\s+(?:pair|answer|query|step|batch)\b"
    r"|\bp(?:50|90|95|99)\b"
    rf"|\bAUC\s*(?:of\s*)?{_NUM}",
    re.IGNORECASE,
)


def dated_lines() -> list[str]:
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if DATE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    return hits


def figures_in_settings() -> list[str]:
    hits = []
    for name, field in Settings.model_fields.items():
        found = [m.group(0) for m in FIGURE.finditer(field.description or "")]
        if found:
            hits.append(f"LLMA_{name.upper()}: {found}")
    return hits


def test_no_dates_in_the_package():
    hits = dated_lines()
    assert not hits, (
        "dates in llm_auction/ (history goes to commit messages, figures to docs/benchmarks.md):\n" + "\n".join(hits)
    )


def test_no_measured_figures_in_settings_descriptions():
    hits = figures_in_settings()
    assert not hits, (
        "settings descriptions with measured figures (state the contract and name the docs section "
        "that holds the figure, e.g. docs/benchmarks.md#...):\n" + "\n".join(hits)
    )


def test_the_figure_pattern_tells_figures_from_contract_numbers():
    figures = [
        "6.2 s per pair", "~6x slower", "93 tokens/s", "AUC 0.691", "peak RSS 1,170 MB", "measured: 14,850",
        "6-19x faster", "10 ms = 0.19 cores idle", "~4% of the sink's CPU", "p50 ~4 ms", "2.2 s per answer",
        "after 300 s without a poll", "256 MiB",
    ]
    contracts = [
        "port 9092", "bids 1..100", "At most 280: below the poll interval", "`1`: one record per batch",
        "exit code 2", "6 partitions", "unset: all 100 (GPU)", "vLLM KV cache in GiB", "Max seconds an event waits",
        "type-I error 0.05", "LLMA_KAFKA_FETCH_MAX_WAIT_MS", "top 8 by relevance",
    ]
    assert [f for f in figures if not FIGURE.search(f)] == []
    assert [c for c in contracts if FIGURE.search(c)] == []
    assert DATE.search("measured 2026-12-05:") and not DATE.search("datetime(2025, 1, 1)")
