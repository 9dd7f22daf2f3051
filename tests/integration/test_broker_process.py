"""The local broker as a process: it starts, answers, and is really gone after stop (also via the CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from llm_auction.infra.broker import LocalBroker, broker_for
from llm_auction.infra.errors import InfraError
from llm_auction.infra.kafka import check_broker, topic_partitions
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import TOPICS

pytestmark = pytest.mark.integration


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone if /proc says so.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_stop_kills_the_process_and_is_idempotent(tmp_path):
    broker = LocalBroker(log_dir=tmp_path).start()
    pid, bootstrap = broker.pid, broker.bootstrap
    check_broker(bootstrap, timeout_s=5)
    assert not _pid_gone(pid)
    assert (tmp_path / f"tansu-{broker.port}.log").read_text().strip()  # its log is kept where asked
    broker.stop()
    assert _pid_gone(pid)
    assert not broker.running()
    broker.stop()  # a second stop is a no-op
    with pytest.raises(InfraError, match="not reachable"):
        check_broker(bootstrap, timeout_s=3)


def test_broker_for_starts_a_local_broker_only_for_the_block():
    with broker_for(Settings(kafka_bootstrap=None)) as bootstrap:
        assert bootstrap.startswith("127.0.0.1:")
        check_broker(bootstrap, timeout_s=5)
    with pytest.raises(InfraError, match="not reachable"):
        check_broker(bootstrap, timeout_s=3)


def test_broker_for_uses_the_configured_bootstrap(kafka_bootstrap):
    with broker_for(Settings(kafka_bootstrap=kafka_bootstrap)) as bootstrap:
        assert bootstrap == kafka_bootstrap


def test_cli_broker_prints_bootstrap_creates_topics_and_stops_on_sigterm():
    env = {**os.environ, "LLMA_LOG_FORMAT": "json"}
    env.pop("LLMA_KAFKA_BOOTSTRAP", None)
    proc = subprocess.Popen([sys.executable, "-m", "llm_auction.cli", "broker"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        info = json.loads(line)
        assert info["backend"] == "tansu" and info["topics"] == sorted(TOPICS)
        bootstrap, tansu_pid = info["bootstrap"], info["pid"]
        parts = topic_partitions(Settings(kafka_bootstrap=bootstrap), bootstrap, list(TOPICS))
        assert parts == {n: s.partitions for n, s in TOPICS.items()}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while not _pid_gone(tansu_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pid_gone(tansu_pid)
    assert "stopping the local broker" in proc.stderr.read()
