"""Benchmark the streaming plumbing, and the share of generation in end-to-end latency.

    .venv/bin/python bench/pipeline.py [--queries 3000] [--repeats 3] [--rate QPS] [--skip-smollm2] [--profile DIR]

Part 1 runs the real loop as it is deployed (compose runs one container per service): a local
Tansu broker, and the responder, the MiniLM user simulator and the ClickHouse sink (chdb) each in
its own process, built by ``llm_auction.consumers.build`` exactly as ``llm-auction serve`` builds
them, with the stored-answer Ad-LLM so the LLM does not dominate. The load generator encodes the
replay's query events (``replay_events`` + ``encode``) before the clock starts and then only
sends them, so the figure is the system's and not the generator's pydantic work (the generator's
own rate is reported beside it). Three passes over the first ``--queries`` queries of a world:

1. warm-up, as fast as possible: every text reaches the simulator's encoder cache (MiniLM on
   unseen text costs ~4 encodings per response and would otherwise be what is measured);
2. throughput, as fast as possible: queries/s end to end, first send to last event stored; the
   same queries replayed ``--repeats`` times (fresh ids and bids), so the pass lasts long enough
   that a moment of a noisy machine does not decide the figure;
3. latency, paced at ``--rate`` queries/s (default: the goal's 2,000, or half the measured
   throughput when that is lower, so that the pass measures latency, not a growing queue): per
   hop, p50/p99 of the time from a record's Kafka timestamp to the broker's acknowledgement of
   its batch's last output (the sink: to its insert), when the next hop can read it. At a rate
   the loop cannot sustain this is queueing delay, and the table says so. Each record's hop
   splits into delivery (Kafka timestamp -> returned by poll: upstream producer, broker, fetch)
   and service (poll -> acknowledged: batching, processing, producing, and waiting for the acks,
   which is reported apart as "ack"), so what the broker costs and what the code costs are told
   apart.

Then, with the services stopped, a bare producer and a bare consumer (same client settings, no
work) send the latency pass's queries through the broker at the same rate: the delivery floor,
below which no hop's delivery can go on this broker and client, and the produce round trip
(send -> acknowledged), below which no hop's ack wait can go.

Afterwards the warehouse is opened and its counts checked against what was sent, so a run
that lost or doubled events fails instead of reporting a figure.

Part 2 times generation per query for the tiny GPT-2 and SmolLM2-135M-Instruct (batch of 8
queries, 8 shown candidates, the demo's token budget), so the plumbing's share is known.

Prints a table and writes bench/results/pipeline.json (queries_per_s, hop_p99_ms,
generation_s_per_query, ...). Goals (issue #4, 2-core machine): >= 2,000 queries/s, < 5 ms p99
per hop.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import StealMeter, machine, table, write_results  # noqa: E402

from llm_auction.consumers.local_loop import is_drained  # noqa: E402
from llm_auction.infra.broker import LocalBroker  # noqa: E402
from llm_auction.infra.kafka import ensure_topics, make_producer  # noqa: E402
from llm_auction.producers.replay import ReplayConfig, replay_events  # noqa: E402
from llm_auction.producers.world import World, WorldSpec, generate_world  # noqa: E402
from llm_auction.schemas import encode  # noqa: E402
from llm_auction.schemas.settings import Settings  # noqa: E402
from llm_auction.schemas.topics import QUERIES  # noqa: E402

HOPS = {"responder": "queries -> responses", "user-sim": "responses -> clicks", "sink": "events -> ClickHouse"}
STATS = ("consumed", "produced", "dead_lettered")
SPLIT = ("hop", "delivery", "service", "ack")  # per record: hop = delivery (Kafka timestamp -> poll) + service (poll -> acknowledged); ack: the part of service waiting for the broker's acks
PHASES = ("warm-up", "throughput", "latency")
# Responder and user simulator: no batch window, a batch is what one poll returns (up to 256), so
# batches grow with load and no record waits for company when the loop is idle. A window makes the
# loop poll with the time left (a few ms), and kafka-python's short polls delay the fetches
# themselves: one echo service at 200 msg/s, delivery p99 ~110 ms with a 5 ms window, ~25 ms
# without; at 200 q/s here the responder hop went from 54 / 189 to 36-41 / 84-86 ms (p50 / p99)
# with throughput unchanged within this VM's noise.
BATCH_MAX_WAIT_S = 0.0
# The sink batches longer: every ClickHouse insert writes a part per table (~10 ms each on chdb
# here), so 5 ms batches cost more than they carry and queue up; production default is 1 s.
SINK_BATCH_MAX_WAIT_S = 0.1
GOAL_QPS = 2000.0
FETCH_MAX_WAIT_MS = 10  # low-latency consumers (the default, 100, spares idle CPU instead)


def _settings(bootstrap: str, data_dir: Path) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap, data_dir=data_dir, adllm_backend="stored", candidates_k=None, kafka_fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        adllm_batch_size=256, sink_batch_size=5000, sink_batch_max_wait_s=SINK_BATCH_MAX_WAIT_S,
    )


def _build(name: str, s: Settings, producer):
    """One service, as ``llm-auction serve <name>`` builds it."""
    from llm_auction.consumers import build
    from llm_auction.models.backends import open_backend

    if name == "responder":
        return build.responder_service(s, s.kafka_bootstrap, producer, open_backend(s))
    if name == "user-sim":
        from llm_auction.models.encoder import TextEncoder
        from llm_auction.models.user_sim import make_user_simulator

        return build.user_sim_service(s, s.kafka_bootstrap, producer, make_user_simulator("embedding", seed=3, encoder=TextEncoder()))
    from llm_auction.infra.clickhouse import get_client
    from llm_auction.infra.ddl import migrate

    client = get_client(s.resolved_clickhouse_url())
    migrate(client)
    return build.sink_service(s, s.kafka_bootstrap, producer, client)


def _profiled(fn, path: Path):
    """``fn`` under cProfile, stats written to ``path`` (``--profile``: where a service spends its CPU)."""
    import cProfile

    def run():
        prof = cProfile.Profile()
        try:
            prof.runcall(fn)
        finally:
            prof.dump_stats(str(path))

    return run


def service_process(name: str, bootstrap: str, data_dir: str, counters, phase, ready, stop, out_dir: str, profile_dir: str | None = None) -> None:
    """A child process: run one service, mirror its counters, keep its hop latencies per phase."""
    from collections import deque

    s = _settings(bootstrap, Path(data_dir))
    producer = make_producer(s, bootstrap)
    svc = _build(name, s, producer)
    if name != "sink":  # the sink's batching comes from its settings (_settings); the others' is fixed in build
        svc.config.batch_max_wait_s = BATCH_MAX_WAIT_S
        svc.config.batch_size = max(svc.config.batch_size, 256)
    for kind in SPLIT:  # index-aligned: every list keeps every record of the run
        setattr(svc, f"{kind}_ms", deque(maxlen=10_000_000))
    svc.stop = stop
    target = _profiled(svc.run, Path(profile_dir) / f"{name}.prof") if profile_dir else svc.run
    runner = threading.Thread(target=target, name=name, daemon=True)
    runner.start()
    marks = {PHASES[0]: (0, time.process_time())}  # phase -> (first hop sample, CPU seconds at its start)
    ready.set()
    seen = 0
    while runner.is_alive():
        for i, k in enumerate(STATS):
            counters[i] = svc.stats[k]
        if phase.value != seen:  # the parent moves on only when the loop is drained
            seen = phase.value
            marks[PHASES[seen]] = (len(svc.hop_ms), time.process_time())
        time.sleep(0.01)
    for i, k in enumerate(STATS):
        counters[i] = svc.stats[k]
    marks["end"] = (len(svc.hop_ms), time.process_time())
    for kind in SPLIT:
        np.save(Path(out_dir) / f"{name}.{kind}.npy", np.asarray(getattr(svc, f"{kind}_ms"), dtype=np.float64))
    (Path(out_dir) / f"{name}.json").write_text(json.dumps(marks))
    producer.close()


class Services:
    """The three service processes, their shared counters, and the phase they tag latencies with."""

    def __init__(self, bootstrap: str, data_dir: Path, out_dir: Path, profile_dir: Path | None = None):
        ctx = mp.get_context("spawn")
        self.out_dir = out_dir
        self.phase = ctx.Value("i", 0)
        self.stop = ctx.Event()
        self.counters = {n: ctx.Array("d", len(STATS), lock=False) for n in HOPS}  # one writer each
        ready = {n: ctx.Event() for n in HOPS}
        self.procs = {
            n: ctx.Process(target=service_process, name=n, args=(n, bootstrap, str(data_dir), self.counters[n], self.phase, ready[n], self.stop, str(out_dir), profile_dir and str(profile_dir)))
            for n in HOPS
        }
        for p in self.procs.values():
            p.start()
        for n, e in ready.items():
            if not e.wait(600):
                raise TimeoutError(f"service {n} did not start")

    def count(self, name: str, stat: str) -> float:
        return self.counters[name][STATS.index(stat)]

    def drained(self, n_queries: int) -> bool:
        return is_drained(n_queries, *({k: self.count(n, k) for k in STATS} for n in HOPS))

    def wait_drained(self, n_queries: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.drained(n_queries):
            dead = [n for n, p in self.procs.items() if not p.is_alive()]
            if dead:
                raise RuntimeError(f"service process(es) exited: {dead}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not drained after {timeout_s}s: " + json.dumps({n: list(c) for n, c in self.counters.items()}))
            time.sleep(0.002)

    def close(self) -> tuple[dict[str, dict[str, dict[str, np.ndarray]]], dict[str, dict[str, float]]]:
        """Stop the services (graceful: last batch committed); latencies (hop -> kind -> phase ->
        ms per record, kinds as in ``SPLIT``) and CPU seconds (hop -> phase)."""
        self.stop.set()
        for p in self.procs.values():
            p.join(60)
        lat, cpu = {}, {}
        for n in HOPS:
            marks = json.loads((self.out_dir / f"{n}.json").read_text())
            at = [marks.get(ph, marks["end"]) for ph in PHASES] + [marks["end"]]
            lat[n] = {}
            for kind in SPLIT:  # the three are index-aligned per record (StreamService)
                ms = np.load(self.out_dir / f"{n}.{kind}.npy")
                lat[n][kind] = {ph: ms[at[i][0] : at[i + 1][0]] for i, ph in enumerate(PHASES)}
            cpu[n] = {ph: at[i + 1][1] - at[i][1] for i, ph in enumerate(PHASES)}
        return lat, cpu


def send(producer, payloads: list[tuple[bytes, bytes]], rate: float | None, topic: str = QUERIES, acks: list[float] | None = None) -> None:
    """Send pre-encoded records, as fast as possible or on a schedule (record i at start + i / rate).
    ``acks``: append each record's produce round trip (send -> acknowledged), in ms."""
    start = time.perf_counter()
    for i, (key, value) in enumerate(payloads):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sent_at = time.perf_counter()
        future = producer.send(topic, key=key, value=value)
        if acks is not None:
            future.add_callback(lambda _, t=sent_at: acks.append(1000.0 * (time.perf_counter() - t)))
    producer.flush()


FLOOR_TOPIC = "bench.delivery-floor"


def floor_consumer(bootstrap: str, data_dir: str, n: int, ready, out: str) -> None:
    """A child process: a bare consumer (the services' settings, no work) recording each record's delivery."""
    from llm_auction.infra.kafka import make_consumer

    consumer = make_consumer(_settings(bootstrap, Path(data_dir)), bootstrap, "bench-floor", [FLOOR_TOPIC])
    while not consumer.assignment():
        consumer.poll(timeout_ms=100)
    ready.set()
    ms: list[float] = []
    deadline = time.monotonic() + 300
    while len(ms) < n and time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=100)
        now_ms = time.time() * 1000.0
        for recs in polled.values():
            ms.extend(now_ms - r.timestamp for r in recs)
    consumer.close()
    np.save(out, np.asarray(ms, dtype=np.float64))


def delivery_floor(bootstrap: str, tmp: Path, payloads: list[tuple[bytes, bytes]], rate: float) -> tuple[np.ndarray, np.ndarray]:
    """The broker's own delivery latency at ``rate``: a bare producer (flushed sends, like a
    service's outputs) and a bare consumer in another process, on a topic like the loop's, with
    the services stopped. No hop can deliver faster than this on this broker and client.
    Returns per record: delivery ms (timestamp -> polled) and produce round trip ms (send -> ack)."""
    from llm_auction.schemas.topics import TOPICS, TopicSpec

    s = _settings(bootstrap, tmp)
    ensure_topics(s, bootstrap, [TopicSpec(FLOOR_TOPIC, TOPICS[QUERIES].partitions, 3_600_000)])
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), tmp / "floor.npy"
    proc = ctx.Process(target=floor_consumer, args=(bootstrap, str(tmp), len(payloads), ready, str(out)))
    proc.start()
    if not ready.wait(120):
        proc.kill()
        raise TimeoutError("the delivery-floor consumer did not join")
    producer = make_producer(s, bootstrap, linger_ms=0)
    acks: list[float] = []
    send(producer, payloads, rate, FLOOR_TOPIC, acks)
    producer.close()
    proc.join(300)
    return np.load(out), np.asarray(acks, dtype=np.float64)


def plumbing(n: int, rate: float | None, tmp: Path, profile_dir: Path | None = None, repeats: int = 3) -> dict:
    generate_world(tmp / "world", WorldSpec(seed=3), progress=False)
    world = World(tmp / "world")
    t0 = time.perf_counter()

    def replayed(seed: int) -> list[tuple[bytes, bytes]]:  # the same n records each time: fresh ids and bids
        return [(e.query_id.encode(), encode(e)) for e in replay_events(world, ReplayConfig(split=None, limit=n, seed=seed))]

    # The throughput pass replays the warmed records `repeats` times: a pass of ~1.5 s moved by a
    # third when the machine hiccuped; a longer one averages that out (texts stay cached).
    passes = [replayed(1), [p for k in range(repeats) for p in replayed(10 + k)], replayed(3)]
    sizes = [len(p) for p in passes]
    generator_qps = sum(sizes) / (time.perf_counter() - t0)
    with LocalBroker() as broker:
        ensure_topics(_settings(broker.bootstrap, tmp), broker.bootstrap)
        producer = make_producer(_settings(broker.bootstrap, tmp), broker.bootstrap)
        services = Services(broker.bootstrap, tmp, tmp, profile_dir)
        broker_proc = psutil.Process(broker.proc.pid)
        elapsed, cpu_other = {}, {}
        try:
            for i, (ph, payloads) in enumerate(zip(PHASES, passes)):
                services.phase.value = i
                if ph == "latency" and rate is None:  # the goal's rate, or half of what the loop sustains
                    rate = min(GOAL_QPS, 0.5 * sizes[1] / elapsed["throughput"])
                t0, b0 = time.perf_counter(), sum(broker_proc.cpu_times()[:2])
                c0 = time.process_time()
                send(producer, payloads, rate if ph == "latency" else None)
                c1 = time.process_time()
                services.wait_drained(sum(sizes[: i + 1]), timeout_s=900)  # counters are cumulative
                elapsed[ph] = time.perf_counter() - t0
                cpu_other[ph] = {"load generator (send)": c1 - c0, "broker (Tansu)": sum(broker_proc.cpu_times()[:2]) - b0}
                print(f"{ph}: {sizes[i]} queries in {elapsed[ph]:.2f} s", flush=True)
        finally:
            lat, cpu = services.close()
            producer.close()
        floor, produce_rtt = delivery_floor(broker.bootstrap, tmp, passes[2], rate)
    stored = _stored_counts(tmp)
    expected = {"queries": sum(sizes), "responses": sum(sizes), "click_events": int(services.count("user-sim", "produced"))}
    if any(stored[k] != v for k, v in expected.items()):
        raise AssertionError(f"the warehouse holds {stored}, expected {expected}: events were lost or doubled")
    achieved = n / elapsed["latency"]

    def pct(q: float, kind: str, phase: str = "latency") -> dict[str, float]:
        return {h: round(float(np.percentile(v[kind][phase], q)), 2) for h, v in lat.items()}

    return {
        "queries": n,
        "throughput_pass_queries": sizes[1],
        "elapsed_s": round(elapsed["throughput"], 2),
        "queries_per_s": round(sizes[1] / elapsed["throughput"], 1),
        "generator_queries_per_s": round(generator_qps, 1),
        "latency_pass": {"target_rate_qps": rate, "achieved_qps": round(achieved, 1)},
        "hop_p50_ms": pct(50, "hop"),
        "hop_p99_ms": pct(99, "hop"),
        "delivery_p50_ms": pct(50, "delivery"),
        "delivery_p99_ms": pct(99, "delivery"),
        "service_p50_ms": pct(50, "service"),
        "service_p99_ms": pct(99, "service"),
        "ack_p50_ms": pct(50, "ack"),
        "ack_p99_ms": pct(99, "ack"),
        "delivery_floor_ms": {"p50": round(float(np.percentile(floor, 50)), 2), "p99": round(float(np.percentile(floor, 99)), 2), "records": int(len(floor))},
        "produce_round_trip_floor_ms": {"p50": round(float(np.percentile(produce_rtt, 50)), 2), "p99": round(float(np.percentile(produce_rtt, 99)), 2), "records": int(len(produce_rtt))},
        "throughput_pass_hop_p99_ms": pct(99, "hop", "throughput"),
        "cpu_ms_per_query": {h: round(1000 * c / sizes[1], 3) for h, c in ({h: c["throughput"] for h, c in cpu.items()} | cpu_other["throughput"]).items()},
        "warehouse_rows": stored,
    }


def _stored_counts(data_dir: Path) -> dict:
    """Deduplicated totals in the warehouse, read after the sink process released chdb."""
    from llm_auction.infra import warehouse
    from llm_auction.infra.clickhouse import get_client

    return warehouse.totals(get_client(_settings("unused:0", data_dir).resolved_clickhouse_url()))


def generation(tmp: Path, world_root: Path, skip_smollm2: bool, data_dir: Path) -> dict:
    from llm_auction.models.adllm import SamplingConfig
    from llm_auction.models.backends import open_backend
    from llm_auction.models.encoder import TextEncoder
    from llm_auction.models.retrieval import top_k_candidates
    from llm_auction.models.tiny import build_tiny

    world = World(world_root)
    enc = TextEncoder()
    queries = [world.event(r) for r, _ in zip(world.records("test"), range(8))]
    shown = [q.model_copy(update={"candidates": top_k_candidates(q, 8, enc)}) for q in queries]
    models = {"tiny": tmp / "tiny"}
    build_tiny(models["tiny"], progress=False)
    if not skip_smollm2:
        from llm_auction.models.smollm2 import is_prepared, prepare_smollm2

        models["smollm2"] = data_dir / "models" / "smollm2"
        if not is_prepared(models["smollm2"]):
            prepare_smollm2(models["smollm2"])
    out = {}
    for name, path in models.items():
        # torch's own thread count, as this row was measured (LLMA_ADLLM_THREADS unset)
        backend = open_backend(Settings(adllm_threads=None), backend="transformers", model=path, sampling=SamplingConfig(max_new_tokens=Settings().adllm_max_new_tokens, seed=1),
                               batch_size=8, base_version="base")
        backend.generate(shown[:2], "base")  # warm-up
        t0 = time.perf_counter()
        backend.generate(shown, "base")
        out[name] = round((time.perf_counter() - t0) / len(shown), 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=3000, help="queries in the warm-up and latency passes (default 3000); the throughput pass replays them --repeats times")
    ap.add_argument("--repeats", type=int, default=3, help="throughput pass length in replays of the warmed queries (default 3: fresh ids and bids, cached texts)")
    ap.add_argument("--rate", type=float, help="queries/s of the paced latency pass (default: 2000, the goal, or half the measured throughput if that is lower, so the pass measures latency rather than a growing queue)")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="run each service under cProfile and write DIR/<service>.prof")
    ap.add_argument("--skip-smollm2", action="store_true", help="time only the tiny model's generation")
    args = ap.parse_args(argv)
    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="llma-bench-") as d:
        tmp = Path(d)
        load_before = machine()["load_average"]
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        steal = StealMeter()
        p = plumbing(args.queries, args.rate, tmp, args.profile and args.profile.resolve(), args.repeats)
        steal_share = steal.share()
        g = generation(tmp, tmp / "world", args.skip_smollm2, settings.data_dir)
    plumbing_s = 1.0 / p["queries_per_s"]
    lp = p["latency_pass"]
    rows = [
        ("end-to-end queries/s (stored answers, services in 3 processes)", f"{p['queries_per_s']:.0f}", ">= 2000"),
        ("load generator queries/s (build + encode, not in the figure above)", f"{p['generator_queries_per_s']:.0f}", ""),
        ("CPU ms/query (throughput pass): " + ", ".join(p["cpu_ms_per_query"]), " / ".join(f"{v:.3f}" for v in p["cpu_ms_per_query"].values()), "sum <= 1.0 on 2 cores"),
        ("latency pass: offered / achieved queries/s", f"{lp['target_rate_qps']:.0f} / {lp['achieved_qps']:.0f}", ""),
    ]
    for h in HOPS:
        rows.append((f"hop {h} ({HOPS[h]}) p50 / p99", f"{p['hop_p50_ms'][h]} / {p['hop_p99_ms'][h]} ms", "p99 < 5 ms"))
        rows.append(("  of which delivery (Kafka timestamp -> poll) / service (poll -> acknowledged), p99", f"{p['delivery_p99_ms'][h]} / {p['service_p99_ms'][h]} ms", ""))
        rows.append(("  service's wait for the broker's acks, p50 / p99", f"{p['ack_p50_ms'][h]} / {p['ack_p99_ms'][h]} ms", ""))
    fl, rt = p["delivery_floor_ms"], p["produce_round_trip_floor_ms"]
    rows.append(("delivery floor: bare producer -> bare consumer on this broker, same rate, p50 / p99", f"{fl['p50']} / {fl['p99']} ms", ""))
    rows.append(("produce round trip floor: bare producer, send -> acknowledged, p50 / p99", f"{rt['p50']} / {rt['p99']} ms", ""))
    rows.append(("CPU time stolen by other VMs during the plumbing passes (/proc/stat steal)", "n/a" if steal_share is None else f"{steal_share:.1%}", ""))
    for name, sec in g.items():
        rows.append((f"generation s/query ({name})", f"{sec}", f"plumbing share {plumbing_s / (plumbing_s + sec):.2%}"))
    print(table(rows))
    path = write_results("pipeline", {
        "machine": {**machine(), "load_average_before": load_before, "cpu_steal_share_during_plumbing": steal_share},
        **p,
        "generation_s_per_query": g,
        "settings": {"batch_max_wait_s": BATCH_MAX_WAIT_S, "sink_batch_max_wait_s": SINK_BATCH_MAX_WAIT_S, "kafka_fetch_max_wait_ms": FETCH_MAX_WAIT_MS, "candidates_k_generation": 8, "max_new_tokens": settings.adllm_max_new_tokens},
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
