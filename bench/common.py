"""What every benchmark reports beside its figures: the machine, and one way to write results."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """CPU model, cores, Python, platform and the load average at the time of the run."""
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
