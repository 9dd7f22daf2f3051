"""Helpers of the fault suite: services as processes, a topic watcher, group offsets, and a
warehouse reader that runs in its own process (chdb admits one process per folder and one folder
per process, and the test process may already hold the session's folder)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from llm_auction.infra.follow import TopicFollower
from llm_auction.infra.kafka import admin_client
from llm_auction.models.stored_backend import StoredAnswerBackend
from llm_auction.schemas import ClickEvent, DeadLetter, ResponseEvent, decode
from llm_auction.schemas.topics import CLICKS, DEAD_LETTER, QUERIES, RESPONSES

COUNTS_KEY = "fault_counts"


def report_counts(record_property, **counts) -> None:
    """Attach ``counts`` to the test's report; the folder's conftest prints them in the summary."""
    record_property(COUNTS_KEY, json.dumps(counts))


# -- services as processes ------------------------------------------------------------------------
class ServiceProcess:
    """``llm-auction serve NAME ARGS`` as a child process, its output appended to ``log``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path):
        self.name, self.args, self.env, self.log = name, args, env, log
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts + 1}\n".encode())
            out.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "llm_auction.cli", "serve", self.name, *self.args], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no batch finished, no commit, no close; whatever was in flight is lost in the process."""
        assert self.alive(), f"{self.name} died on its own (exit {self.proc.returncode}); see {self.log}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.kills += 1

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (finish the batch, commit, exit 0) and the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def service_env(bootstrap: str, tmp: Path, **settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "LLMA_KAFKA_BOOTSTRAP": bootstrap,
        "LLMA_DATA_DIR": str(tmp / "data"),
        "LLMA_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **{f"LLMA_{k.upper()}": str(v) for k, v in settings.items()},
    })
    return env


# -- a slow service -------------------------------------------------------------------------------
class SlowStoredBackend(StoredAnswerBackend):
    """The stored-answer backend, ``delay_s`` slower per query: a responder slower than its input
    (back-pressure), or one still working when the broker stops (the outage test)."""

    def __init__(self, delay_s: float):
        super().__init__()
        self.delay_s = delay_s

    def generate(self, queries, policy_version, n=1):
        time.sleep(self.delay_s * len(queries))
        return super().generate(queries, policy_version, n)


# -- group offsets -------------------------------------------------------------------------------
class Offsets:
    """Committed offsets of consumer groups (one admin client: use it from one thread)."""

    def __init__(self, settings, bootstrap: str):
        self.admin = admin_client(settings, bootstrap)
        self.partitions: dict[str, list] = {}

    def committed(self, group: str, topics) -> dict:
        from kafka import TopicPartition

        tps = []
        for t in topics:
            if t not in self.partitions:
                self.partitions[t] = [TopicPartition(t, p) for p in range(_partition_count(self.admin, t))]
            tps += self.partitions[t]
        got = self.admin.list_group_offsets({group: tps})[group]
        return {(tp.topic, tp.partition): om.offset for tp, om in got.items() if om.offset is not None and om.offset >= 0}

    def total(self, group: str, topics) -> int:
        return sum(self.committed(group, topics).values())

    def close(self) -> None:
        self.admin.close()


def _partition_count(admin, topic: str) -> int:
    (desc,) = admin.describe_topics([topic])
    return len(desc["partitions"])


# -- the topics, read from the beginning ---------------------------------------------------------
@dataclass
class Seen:
    """What the watcher read of the run: its queries, responses and clicks (deduplicated by event id,
    each duplicate compared with the first) and its dead letters."""

    records: Counter = field(default_factory=Counter)  # run's records per topic, duplicates included
    queries: set[str] = field(default_factory=set)
    responses: dict[str, ResponseEvent] = field(default_factory=dict)  # event_id -> event
    clicks: dict[str, ClickEvent] = field(default_factory=dict)  # event_id -> event
    differing: int = 0  # a redelivered event whose content differs from its first copy
    differences: list[str] = field(default_factory=list)  # the first few: event type and fields
    probability_redrawn: int = 0  # redelivered clicks whose click_probability differs from the first copy's
    probability_drift: float = 0.0  # the largest such difference
    dead: list[DeadLetter] = field(default_factory=list)  # dead letters naming the run


class TopicWatcher:
    """Reads auction.queries, .responses, .clicks and .dead-letter from the beginning (no group)
    for as long as it runs; keeps the records whose key contains ``marker``."""

    TOPICS = (QUERIES, RESPONSES, CLICKS, DEAD_LETTER)

    def __init__(self, settings, bootstrap: str, marker: str):
        self.marker = marker.encode()
        self.seen = Seen()
        self.follower = TopicFollower(settings, bootstrap, self.TOPICS, self._take, name="topic-watcher")

    def start(self) -> None:
        self.follower.start()

    def _take(self, r) -> None:
        s = self.seen
        if self.marker not in (r.key or b"") and not (r.topic == DEAD_LETTER and self.marker in (r.value or b"")):
            return
        s.records[r.topic] += 1
        if r.topic == QUERIES:
            s.queries.add(r.key.decode())
        elif r.topic == RESPONSES:
            self._dedupe(s.responses, decode(r.value, ResponseEvent))
        elif r.topic == CLICKS:
            self._dedupe(s.clicks, decode(r.value, ClickEvent))
        else:
            s.dead.append(decode(r.value, DeadLetter))

    # Not compared: latency_ms and generation_s (measurements of the attempt) and click_probability, which the
    # embedding simulator recomputes on a redelivery from float32 embeddings of another batch
    # (MiniLM's output varies in the last bits with the batch it is encoded in); the drift is
    # recorded in ``probability_drift`` instead. Every field that accounting reads must repeat.
    NOT_REPEATED = frozenset({"latency_ms", "generation_s", "click_probability"})

    def _dedupe(self, by_id: dict, ev) -> None:
        first = by_id.setdefault(ev.event_id, ev)
        if first is ev:
            return
        a, b = first.model_dump(exclude=self.NOT_REPEATED), ev.model_dump(exclude=self.NOT_REPEATED)
        if a != b:
            self.seen.differing += 1
            if len(self.seen.differences) < 5:
                self.seen.differences.append(f"{type(ev).__name__} {ev.event_id}: " + "; ".join(f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]))
        p, q = getattr(first, "click_probability", None), getattr(ev, "click_probability", None)
        if p is not None and q is not None and p != q:
            self.seen.probability_redrawn += 1
            self.seen.probability_drift = max(self.seen.probability_drift, abs(p - q))

    def snapshot(self) -> tuple[dict, float, int, int]:
        """Per topic and partition the offset after the last record read (of any run), when the last
        record arrived, and how many of the run's responses and clicks were read."""
        f = self.follower
        with f.lock:
            return dict(f.ends), f.last_new, len(self.seen.responses), len(self.seen.clicks)

    def close(self) -> Seen:
        if (error := self.follower.stop()) is not None:
            raise error
        return self.seen


# -- the warehouse, read in a process of its own ---------------------------------------------------
_READER = r"""
import json, sys
from llm_auction.infra.clickhouse import get_client
url, marker = sys.argv[1], sys.argv[2]
c = get_client(url)
def rows(sql):
    r = c.query(sql, parameters={"m": marker})
    return [dict(zip(r.column_names, row)) for row in r.result_rows]
out = {}
for t in ("queries", "responses", "clicks"):
    out[t] = rows(f"SELECT count() AS final_rows, uniqExact(query_id) AS query_ids, uniqExact(event_id) AS event_ids FROM llm_auction.{t} FINAL WHERE position(query_id, {{m:String}}) > 0")[0]
    out[t]["stored_rows"] = rows(f"SELECT count() AS n FROM llm_auction.{t} WHERE position(query_id, {{m:String}}) > 0")[0]["n"]
out["click_rows"] = [[r["event_id"], int(r["clicked"]), int(r["bid"])] for r in rows("SELECT event_id, clicked, bid FROM llm_auction.clicks FINAL WHERE position(query_id, {m:String}) > 0")]
out["revenue"] = int(rows("SELECT sum(bid * clicked) AS r FROM llm_auction.clicks FINAL WHERE position(query_id, {m:String}) > 0")[0]["r"])
print(json.dumps(out, default=int))
"""


def read_warehouse(url: str, marker: str, env: dict[str, str]) -> dict:
    """Counts of the rows whose query_id contains ``marker``, read by a separate process."""
    done = subprocess.run([sys.executable, "-c", _READER, url, marker], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
