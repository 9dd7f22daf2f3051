"""Benchmark the streaming plumbing, and the share of generation in end-to-end latency.

    .venv/bin/python bench/pipeline.py [--queries 3000] [--skip-smollm2]

Part 1 runs the real loop in one process -- local Tansu broker, responder, MiniLM user simulator,
ClickHouse sink (chdb) -- with the stored-answer Ad-LLM, so the LLM does not dominate, and
low-latency batching (5 ms max wait per hop). A warm-up pass replays the same queries first, so
the measured pass (fresh bids) finds every text in the encoder cache: the simulator's MiniLM on
unseen text costs ~4 encodings per response and would otherwise be what is measured. It reports end-to-end queries/s (replay start to
last event stored) and, per hop, p50/p99 of the time from a record's Kafka timestamp to the
commit of its batch (the latency that hop adds: queueing + batching + processing).

Part 2 times generation per query for the tiny GPT-2 and SmolLM2-135M-Instruct (batch of 8
queries, 8 shown candidates, the demo's token budget), so the plumbing's share is known.

Prints a table and writes bench/results/pipeline.json (queries_per_s, hop_p99_ms,
generation_s_per_query, ...). Goals (issue #4, 2-core machine): >= 2,000 queries/s, < 5 ms p99
per hop.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import machine, table, write_results  # noqa: E402

from llm_auction.consumers import build  # noqa: E402
from llm_auction.infra.broker import LocalBroker  # noqa: E402
from llm_auction.infra.clickhouse import get_client  # noqa: E402
from llm_auction.infra.ddl import migrate  # noqa: E402
from llm_auction.infra.kafka import ensure_topics, make_producer  # noqa: E402
from llm_auction.models.encoder import TextEncoder  # noqa: E402
from llm_auction.models.stored_backend import StoredAnswerBackend  # noqa: E402
from llm_auction.models.user_sim import make_user_simulator  # noqa: E402
from llm_auction.producers.replay import ReplayConfig, replay  # noqa: E402
from llm_auction.producers.world import World, WorldSpec, generate_world  # noqa: E402
from llm_auction.schemas.settings import Settings  # noqa: E402

HOPS = {"responder": "queries -> responses", "user-sim": "responses -> clicks", "sink": "events -> ClickHouse"}


def plumbing(n: int, tmp: Path) -> dict:
    generate_world(tmp / "world", WorldSpec(seed=3), progress=False)
    world = World(tmp / "world")
    encoder = TextEncoder()
    sim = make_user_simulator("embedding", seed=3, encoder=encoder)
    with LocalBroker() as broker:
        s = Settings(
            kafka_bootstrap=broker.bootstrap, data_dir=tmp, adllm_backend="stored", candidates_k=None,
            adllm_batch_size=256, sink_batch_size=5000, sink_batch_max_wait_s=0.005,
        )
        ensure_topics(s, broker.bootstrap)
        client = get_client(s.resolved_clickhouse_url())
        migrate(client)
        producer = make_producer(s, broker.bootstrap)
        loop = build.local_loop(s, broker.bootstrap, producer, StoredAnswerBackend(), sim, client)
        for svc in loop.services:
            svc.config.batch_max_wait_s = 0.005
            svc.config.batch_size = max(svc.config.batch_size, 256)
        loop.start()
        try:
            # Warm-up: the same queries once, so the measured pass finds every text in the
            # encoder's cache and measures the plumbing, not MiniLM on unseen text.
            warm = replay(world, producer, ReplayConfig(split=None, limit=n, seed=1), progress=True)
            loop.wait_drained(warm, timeout_s=1800, show_progress=True)
            for svc in loop.services:
                svc.hop_ms.clear()
            t0 = time.perf_counter()
            sent = replay(world, producer, ReplayConfig(split=None, limit=n, seed=2), progress=False)
            loop.wait_drained(warm + sent, timeout_s=600)  # counts are cumulative since start
            elapsed = time.perf_counter() - t0
            hops = {svc.config.name: np.array(svc.hop_ms) for svc in loop.services}
        finally:
            loop.close()
            producer.close()
    return {
        "queries": sent,
        "elapsed_s": round(elapsed, 2),
        "queries_per_s": round(sent / elapsed, 1),
        "hop_p50_ms": {h: round(float(np.percentile(v, 50)), 2) for h, v in hops.items()},
        "hop_p99_ms": {h: round(float(np.percentile(v, 99)), 2) for h, v in hops.items()},
    }


def generation(tmp: Path, world_root: Path, skip_smollm2: bool, data_dir: Path) -> dict:
    from llm_auction.models.adllm import SamplingConfig, make_backend
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
        backend = make_backend("transformers", path, sampling=SamplingConfig(max_new_tokens=Settings().adllm_max_new_tokens, seed=1), batch_size=8)
        backend.generate(shown[:2], "base")  # warm-up
        t0 = time.perf_counter()
        backend.generate(shown, "base")
        out[name] = round((time.perf_counter() - t0) / len(shown), 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=3000, help="queries in the measured plumbing run (default 3000)")
    ap.add_argument("--skip-smollm2", action="store_true", help="time only the tiny model's generation")
    args = ap.parse_args(argv)
    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="llma-bench-") as d:
        tmp = Path(d)
        load_before = machine()["load_average"]
        p = plumbing(args.queries, tmp)
        g = generation(tmp, tmp / "world", args.skip_smollm2, settings.data_dir)
    plumbing_s = 1.0 / p["queries_per_s"]
    rows = [("end-to-end queries/s (stored answers)", f"{p['queries_per_s']:.0f}", ">= 2000")]
    for h in HOPS:
        rows.append((f"hop {h} ({HOPS[h]}) p50 / p99", f"{p['hop_p50_ms'][h]} / {p['hop_p99_ms'][h]} ms", "p99 < 5 ms"))
    for name, sec in g.items():
        rows.append((f"generation s/query ({name})", f"{sec}", f"plumbing share {plumbing_s / (plumbing_s + sec):.2%}"))
    print(table(rows))
    path = write_results("pipeline", {
        "machine": {**machine(), "load_average_before": load_before},
        **p,
        "generation_s_per_query": g,
        "settings": {"batch_max_wait_s": 0.005, "candidates_k_generation": 8, "max_new_tokens": settings.adllm_max_new_tokens},
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
