"""The fault suite (issue 15): crash and restart, fuzzed bad input, on the real broker and ClickHouse.

Every test module here sets ``pytestmark = [pytest.mark.faults, pytest.mark.integration]`` (the
default suite and CI run them; ``-m faults`` runs only them). A test reports its counts with
``faults_support.report_counts``; the terminal summary below prints them in plain ``pytest``
output (no ``-s`` needed), one line per test, under "fault suite counts".
"""

from __future__ import annotations

import json

from faults_support import COUNTS_KEY

_collected: dict[str, dict] = {}  # test id -> its counts (the last reported wins)


def pytest_runtest_logreport(report):
    # every phase: a fixture may report in its teardown (its counts then reach the teardown report)
    for key, value in report.user_properties:
        if key == COUNTS_KEY:
            _collected[report.nodeid.split("::")[-1]] = json.loads(value)


def pytest_terminal_summary(terminalreporter):
    if not _collected:
        return
    terminalreporter.section("fault suite counts")
    for test, counts in _collected.items():
        terminalreporter.write_line(f"{test}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
