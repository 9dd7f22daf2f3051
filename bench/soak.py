"""Soak: the whole loop at a fixed rate for N minutes; lag and memory over time; reconciliation at the end.

    .venv/bin/python bench/soak.py [--minutes 1] [--rate 30] [--backend stored] [--sample-s 5]

The loop runs on the embedded defaults: a fresh local broker (Tansu) and a fresh embedded
ClickHouse (chdb) in a temporary folder. chdb admits one process per folder, so the responder,
the user simulator (the embedding click model over real MiniLM) and the sink run in this one
process, each on its own thread with its own consumer, exactly as ``llm-auction demo`` runs them
(``consumers.build.local_loop``). The Ad-LLM is the ``stored`` backend by default, so the soak
measures the plumbing and its memory rather than generation (``--backend`` picks another).

While a paced replay (``--rate`` queries/s, test split, looping with fresh ids and bids) runs for
``--minutes``, every ``--sample-s`` seconds it records each service group's consumer lag (committed
offsets against the partitions' true ends, ``llm_auction.infra.lag``) and the process's RSS. The
services are threads of one process, so memory is the process's (``rss_scope`` in the JSON says
so), not a per-service figure. Whether memory stopped growing is judged on the second half of the
run: the slope of a least-squares line through its RSS samples, in MB per minute, against
``--flat-mb-per-min``.

At the end the replay stops, the loop drains (every group committed up to the end of its topics),
and the run is reconciled: a watcher that read the queries, responses, clicks and dead-letter
topics from the beginning (deduplicating by event id) is compared with ClickHouse read ``FINAL``:
every query acknowledged by the broker has one query row and exactly one response row; the click
rows are exactly the click events the simulator emitted (same ids, same clicked flag and bid); and
revenue equals the sum of those clicks' bids. ``lost`` counts events on the topics missing from
ClickHouse (and queries without an answer that were not dead-lettered); ``duplicated`` counts rows
or answers beyond one per event or query. The run exits 1 when either is not 0 or revenue differs.

Prints a table and writes bench/results/soak.json (events, lost, duplicated, dead_letters,
max_rss_mb, lag and rss series, rss_slope_mb_per_min_second_half, memory_flat, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import StealMeter, machine, table, write_results  # noqa: E402

from llm_auction.infra.broker import LocalBroker  # noqa: E402
from llm_auction.infra.follow import TopicFollower  # noqa: E402
from llm_auction.infra.kafka import ensure_topics, make_producer  # noqa: E402
from llm_auction.infra.lag import LagReader  # noqa: E402
from llm_auction.producers.replay import ReplayConfig, replay  # noqa: E402
from llm_auction.producers.world import World, WorldSpec, generate_world  # noqa: E402
from llm_auction.schemas import ClickEvent, DeadLetter, ResponseEvent, decode  # noqa: E402
from llm_auction.schemas.settings import Settings  # noqa: E402
from llm_auction.schemas.topics import CLICKS, DEAD_LETTER, QUERIES, RESPONSES  # noqa: E402

RSS_SCOPE = "one process: responder, user simulator and sink are threads of it (chdb admits one process per folder)"
MB = 1024 * 1024


class Watcher:
    """Reads the loop's four topics from the beginning (no group) while it runs: the query ids, the
    responses and clicks by event id (with copies counted), the dead letters by source topic."""

    def __init__(self, settings: Settings, bootstrap: str):
        self.records: Counter = Counter()  # per topic, copies included
        self.queries: set[str] = set()
        self.responses: dict[str, str] = {}  # event_id -> query_id
        self.clicks: dict[str, tuple[int, int]] = {}  # event_id -> (clicked, bid)
        self.dead: Counter = Counter()  # source topic -> dead letters
        self.dead_queries: set[str] = set()  # query ids the responder dead-lettered
        self.follower = TopicFollower(settings, bootstrap, (QUERIES, RESPONSES, CLICKS, DEAD_LETTER), self._take, name="soak-watcher")

    def start(self) -> None:
        self.follower.start()

    def _take(self, r) -> None:
        self.records[r.topic] += 1
        if r.topic == QUERIES:
            self.queries.add(r.key.decode())
        elif r.topic == RESPONSES:
            ev = decode(r.value, ResponseEvent)
            self.responses[ev.event_id] = ev.query_id
        elif r.topic == CLICKS:
            ev = decode(r.value, ClickEvent)
            self.clicks[ev.event_id] = (int(ev.clicked), int(ev.bid))
        else:
            dl = decode(r.value, DeadLetter)
            self.dead[dl.source_topic] += 1
            if dl.source_topic == QUERIES and dl.key:
                self.dead_queries.add(dl.key)

    def quiet_for(self, seconds: float) -> bool:
        return self.follower.quiet_for(seconds)

    def close(self) -> None:
        if (error := self.follower.stop()) is not None:
            raise error


class Sampler(threading.Thread):
    """Every ``every_s``: the process's RSS, each service group's lag, and the services' counters."""

    def __init__(self, settings: Settings, bootstrap: str, groups: dict[str, list[str]], services, every_s: float):
        super().__init__(daemon=True, name="soak-sampler")
        self.reader = LagReader(settings, bootstrap)
        self.groups, self.services, self.every_s = groups, services, every_s
        self.proc = psutil.Process()
        self.t0 = time.monotonic()
        self.samples: list[dict] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def sample(self) -> dict:
        lag: dict[str, int] = {}
        for row in self.reader.lag(self.groups):
            lag[row.group] = lag.get(row.group, 0) + row.lag
        s = {
            "t_s": round(time.monotonic() - self.t0, 1),
            "rss_mb": round(self.proc.memory_info().rss / MB, 1),
            "lag": lag,
            "consumed": {svc.config.name: int(svc.stats["consumed"]) for svc in self.services},
        }
        self.samples.append(s)
        return s

    def run(self) -> None:
        try:
            while not self.halt.wait(self.every_s):
                self.sample()
        except BaseException as e:  # noqa: BLE001 - raised by close()
            self.error = e

    def close(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        self.reader.close()
        if self.error is not None:
            raise self.error


def rss_slope(samples: list[dict], start_s: float) -> float | None:
    """MB per minute of a least-squares line through the RSS samples from ``start_s`` on."""
    pts = [(s["t_s"], s["rss_mb"]) for s in samples if s["t_s"] >= start_s]
    if len(pts) < 3:
        return None
    t, m = np.array(pts).T
    return round(float(np.polyfit(t / 60.0, m, 1)[0]), 2)


def reconcile(client, w: Watcher, sent: int) -> dict:
    """ClickHouse (FINAL) against what the watcher read on the topics."""

    def col(sql: str) -> list:
        return [r[0] for r in client.query(sql).result_rows]

    q_ids = col("SELECT query_id FROM llm_auction.queries FINAL")
    resp = client.query("SELECT event_id, query_id FROM llm_auction.responses FINAL").result_rows
    clicks = {e: (int(c), int(b)) for e, c, b in client.query("SELECT event_id, clicked, bid FROM llm_auction.clicks FINAL").result_rows}
    revenue = int(col("SELECT sum(bid * clicked) FROM llm_auction.clicks FINAL")[0] or 0)
    stored_rows = {t: int(col(f"SELECT count() FROM llm_auction.{t}")[0]) for t in ("queries", "responses", "clicks")}

    answered = Counter(q for _, q in resp)
    lost_queries = len(w.queries - set(q_ids))
    unanswered = len(w.queries - set(answered) - w.dead_queries)
    lost_responses = len(set(w.responses) - {e for e, _ in resp})
    lost_clicks = len(set(w.clicks) - set(clicks))
    dup_query_rows = len(q_ids) - len(set(q_ids))
    dup_answers = sum(n - 1 for n in answered.values() if n > 1)
    extra_clicks = len(set(clicks) - set(w.clicks))  # rows no emitted click explains
    differing_clicks = sum(1 for e, v in clicks.items() if e in w.clicks and w.clicks[e] != v)
    topic_revenue = sum(b for c, b in w.clicks.values() if c)
    return {
        "queries_acknowledged": sent,
        "queries_on_topic": len(w.queries),
        "query_rows": len(set(q_ids)),
        "response_rows": len(resp),
        "click_events_on_topic": len(w.clicks),
        "click_rows": len(clicks),
        "clicked": sum(c for c, _ in clicks.values()),
        "revenue_clickhouse": revenue,
        "revenue_topic_clicks": topic_revenue,
        "revenue_matches": revenue == topic_revenue,
        "stored_rows_before_dedup": stored_rows,
        "topic_records": dict(w.records),
        "redelivered_on_topics": {RESPONSES: w.records[RESPONSES] - len(w.responses), CLICKS: w.records[CLICKS] - len(w.clicks), QUERIES: w.records[QUERIES] - len(w.queries)},
        "lost_detail": {"queries_not_stored": lost_queries + max(0, sent - len(w.queries)), "queries_unanswered": unanswered, "responses_not_stored": lost_responses, "clicks_not_stored": lost_clicks},
        "duplicated_detail": {"query_rows": dup_query_rows, "extra_answers": dup_answers, "click_rows_not_emitted": extra_clicks, "click_rows_differing": differing_clicks},
    }


def wait_caught_up(reader: LagReader, groups: dict[str, list[str]], timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = reader.lag(groups)
        if all(r.lag == 0 for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def soak(minutes: float, rate: float, backend: str, sample_s: float, world: World, tmp: Path, seed: int) -> dict:
    from llm_auction.consumers import build
    from llm_auction.models.backends import open_backend
    from llm_auction.infra.clickhouse import get_client
    from llm_auction.infra.ddl import migrate
    from llm_auction.models.encoder import TextEncoder
    from llm_auction.models.user_sim import make_user_simulator

    base = Settings()
    run = uuid.uuid4().hex[:8]
    with LocalBroker() as broker:
        s = base.with_overrides(
            kafka_bootstrap=broker.bootstrap, clickhouse_url=f"chdb://{tmp / 'clickhouse'}", adllm_backend=backend,
            adllm_model=base.adllm_model or base.resolved_adllm_model(), seed=seed,
        )
        ensure_topics(s, broker.bootstrap)
        client = get_client(s.resolved_clickhouse_url())
        migrate(client)
        encoder = TextEncoder()
        simulator = make_user_simulator(s.user_sim_backend, seed=s.seed, encoder=encoder)
        adllm = open_backend(s)
        producer = make_producer(s, broker.bootstrap)
        loop = build.local_loop(s, broker.bootstrap, producer, adllm, simulator, client, build.candidate_picker(s, encoder)).start()
        groups = {svc.config.group_id: list(svc.config.topics) for svc in loop.services}
        watcher = Watcher(s, broker.bootstrap)
        watcher.start()
        sampler = Sampler(s, broker.bootstrap, groups, loop.services, sample_s)
        stop_replay = threading.Event()
        sent: list[int] = []
        replay_errors: list[BaseException] = []

        def run_replay() -> None:
            try:
                sent.append(replay(world, producer, ReplayConfig(split="test", rate=rate, loop=True, run_id=run, seed=seed), progress=False, stop=stop_replay))
            except BaseException as e:  # noqa: BLE001 - raised below
                replay_errors.append(e)

        replayer = threading.Thread(target=run_replay, name="soak-replay", daemon=True)
        from tqdm import tqdm

        try:
            sampler.sample()
            sampler.start()
            t0 = time.monotonic()
            replayer.start()
            duration = minutes * 60.0
            with tqdm(total=int(duration), desc="soak", unit="s", disable=None, mininterval=5.0) as bar:
                while (el := time.monotonic() - t0) < duration:
                    dead = [t.name for t in loop.threads if not t.is_alive()]
                    if dead:
                        raise RuntimeError(f"service thread(s) stopped: {', '.join(dead)} (see the log above)")
                    if replay_errors:
                        raise replay_errors[0]
                    time.sleep(min(1.0, duration - el))
                    bar.update(int(time.monotonic() - t0) - bar.n)
            stop_replay.set()
            replayer.join(timeout=120)
            if replay_errors:
                raise replay_errors[0]
            run_s = time.monotonic() - t0
            n_sent = sent[0]
            loop.wait_drained(n_sent, timeout_s=600)
            sampler.close()  # its reader belongs to its thread; a fresh one checks the drain
            checker = LagReader(s, broker.bootstrap)
            try:
                final_lag = wait_caught_up(checker, groups, 120)
            finally:
                checker.close()
            drained_s = time.monotonic() - t0
            deadline = time.monotonic() + 60
            while not (watcher.quiet_for(2.0) and len(watcher.queries) >= n_sent) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            stop_replay.set()
            loop.close()
            producer.close()
            watcher.close()
            if sampler.is_alive():
                sampler.close()
            adllm.close()
        stats = {svc.config.name: {k: int(v) for k, v in svc.stats.items() if k in ("consumed", "produced", "dead_lettered")} for svc in loop.services}
        rec = reconcile(client, watcher, n_sent)
    samples = sampler.samples
    lost = sum(rec["lost_detail"].values())
    duplicated = sum(rec["duplicated_detail"].values())
    dead_letters = sum(watcher.dead.values())
    slope = rss_slope(samples, run_s / 2)
    return {
        "minutes": minutes,
        "rate_qps": rate,
        "backend": backend,
        "user_sim_backend": s.user_sim_backend,
        "run_s": round(run_s, 1),
        "drained_s": round(drained_s, 1),
        "achieved_qps": round(n_sent / run_s, 2),
        "events": rec["query_rows"] + rec["response_rows"] + rec["click_rows"],
        "lost": lost,
        "duplicated": duplicated,
        "dead_letters": dead_letters,
        "dead_letters_by_topic": dict(watcher.dead),
        "revenue_matches": rec["revenue_matches"],
        "max_rss_mb": {"loop_process": max(x["rss_mb"] for x in samples)},
        "rss_scope": RSS_SCOPE,
        "rss_mb_first_last": [samples[0]["rss_mb"], samples[-1]["rss_mb"]],
        "rss_slope_mb_per_min_second_half": slope,
        "max_lag": {g: max(x["lag"].get(g, 0) for x in samples) for g in groups},
        "final_lag": {r.group + " " + r.topic: r.lag for r in final_lag},
        "encoder_cache_entries": len(encoder),
        "service_stats": stats,
        "reconciliation": rec,
        "series": {"sample_s": sample_s, "t_s": [x["t_s"] for x in samples], "rss_mb": [x["rss_mb"] for x in samples], "lag": {g: [x["lag"].get(g, 0) for x in samples] for g in groups}},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Writes bench/results/soak.json; exits 1 if anything was lost or doubled.")
    ap.add_argument("--minutes", type=float, default=1.0, help="how long the replay runs (default 1; the recorded soak is --minutes 10)")
    ap.add_argument("--rate", type=float, default=30.0, help="replay rate in queries/s (default 30)")
    ap.add_argument("--backend", choices=("stored", "transformers", "vllm"), default="stored", help="Ad-LLM backend (default stored: measures the plumbing, not generation)")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between lag and memory samples (default 5)")
    ap.add_argument("--flat-mb-per-min", type=float, default=2.0, help="memory counts as flat when the RSS slope over the run's second half is at most this (default 2 MB/min)")
    ap.add_argument("--seed", type=int, default=15, help="replay seed (bids)")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_s <= 0:
        ap.error("--minutes, --rate and --sample-s must be positive")
    with tempfile.TemporaryDirectory(prefix="llma-soak-") as d:
        tmp = Path(d)
        root = Settings().data_dir / "world"
        if not (root / "manifest.json").exists():
            root = tmp / "world"
            generate_world(root, WorldSpec(seed=7))
        load_before = machine()["load_average"]
        steal = StealMeter()
        r = soak(args.minutes, args.rate, args.backend, args.sample_s, World(root), tmp, args.seed)
        steal_share = steal.share()
    r["memory_flat"] = r["rss_slope_mb_per_min_second_half"] is not None and r["rss_slope_mb_per_min_second_half"] <= args.flat_mb_per_min
    r["flat_threshold_mb_per_min"] = args.flat_mb_per_min
    rec = r["reconciliation"]
    ok = r["lost"] == 0 and r["duplicated"] == 0 and r["revenue_matches"]
    rows = [
        ("run: minutes at offered rate (achieved q/s)", f"{args.minutes:g} min at {args.rate:g} q/s ({r['achieved_qps']})", ""),
        ("queries acknowledged / stored / answered", f"{rec['queries_acknowledged']} / {rec['query_rows']} / {rec['response_rows']}", "all equal"),
        ("click events emitted (topic, unique) / click rows (FINAL)", f"{rec['click_events_on_topic']} / {rec['click_rows']}", "equal"),
        ("revenue ClickHouse / sum of clicked bids on the topic", f"{rec['revenue_clickhouse']} / {rec['revenue_topic_clicks']}", "equal"),
        ("events stored (queries + responses + clicks)", f"{r['events']}", ""),
        ("lost / duplicated", f"{r['lost']} / {r['duplicated']}", "0 / 0"),
        ("dead letters", f"{r['dead_letters']}", "0"),
        ("max lag (records) " + ", ".join(r["max_lag"]), " / ".join(str(v) for v in r["max_lag"].values()), ""),
        ("lag after drain (all groups)", f"{sum(r['final_lag'].values())}", "0"),
        ("RSS first / last / max MB (" + "one process" + ")", f"{r['rss_mb_first_last'][0]} / {r['rss_mb_first_last'][1]} / {r['max_rss_mb']['loop_process']}", ""),
        ("RSS slope, second half (MB/min)", f"{r['rss_slope_mb_per_min_second_half']}", f"<= {args.flat_mb_per_min:g} (flat)"),
        ("CPU time stolen by other VMs (/proc/stat steal)", "n/a" if steal_share is None else f"{steal_share:.1%}", ""),
    ]
    print(table(rows))
    path = write_results("soak", {"machine": {**machine(), "load_average_before": load_before, "cpu_steal_share": steal_share}, "ok": ok, **r})
    print(f"wrote {path}")
    if not ok:
        print(f"soak FAILED: lost {r['lost']} {rec['lost_detail']}, duplicated {r['duplicated']} {rec['duplicated_detail']}, revenue matches {r['revenue_matches']}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
