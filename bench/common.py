"""What every benchmark reports beside its figures: the machine, and one way to write results."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def python_speed_s(n: int = 5_000_000) -> float:
    """Seconds for a fixed pure-Python loop (best of 3): the speed of the CPU this run got.

    Shared 2-core VMs of one model differ from day to day (bench/pipeline.py's load generator,
    the same code, encoded 2,433 queries/s one day and 1,304 another), so a figure without
    this yardstick, measured beside it, cannot be compared with another run's.
    """
    import time

    best = float("inf")
    for _ in range(3):
        t0, acc = time.perf_counter(), 0
        for i in range(n):
            acc += i
        best = min(best, time.perf_counter() - t0)
    return round(best, 3)


class StealMeter:
    """Share of CPU time the hypervisor gave to other guests ("steal" in /proc/stat) between this
    object's creation and ``share()``. On a shared VM it tells a slow run caused by neighbours from one
    caused by the code; None where /proc/stat has no steal column (not Linux)."""

    def __init__(self) -> None:
        self._at = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return (fields[7], sum(fields[:8])) if len(fields) >= 8 else None

    def share(self) -> float | None:
        now = self._read()
        if now is None or self._at is None or now[1] == self._at[1]:
            return None
        return round((now[0] - self._at[0]) / (now[1] - self._at[1]), 4)


def machine() -> dict:
    """CPU model, cores, Python, platform, the load average, and a CPU-speed yardstick."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python_loop_5m_s": python_speed_s(),
    }


def write_results(name: str, data: dict) -> Path:
    """Write ``bench/results/<name>.json`` with the command line that produced it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"command": " ".join(["python", *sys.argv]), **data}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def table(rows: list[tuple[str, str, str]]) -> str:
    """measure | result | goal, as aligned text."""
    head = ("measure", "result", "goal")
    w = [max(len(str(r[i])) for r in [head, *rows]) for i in range(3)]
    line = lambda r: "  ".join(str(c).ljust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([line(head), line(["-" * x for x in w]), *(line(r) for r in rows)])
