"""The embedded defaults a one-process run stands on: world, CPU model, broker, warehouse, services.

The learning loop (``llm-auction demo`` and ``llm-auction loop``) runs every service in one process (chdb admits one
process per folder; DESIGN.md), on the same set-up: generate the world once, prepare SmolLM2
once, open the Ad-LLM, start the local broker (unless ``LLMA_KAFKA_BOOTSTRAP`` is set) and the
embedded ClickHouse (unless ``LLMA_CLICKHOUSE_URL`` is set), and run responder, user simulator
and sink on threads. The responder follows the control topics (policy versions, rollouts), so a
version announced during the run is verified, hot-loaded and routed to as in production.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Step = Callable[..., None]


def prepare_world(s, step: Step):
    """The world under ``<data_dir>/world``, generated on first use."""
    from llm_auction.producers.world import World, WorldSpec, generate_world

    root = s.data_dir / "world"
    if not (root / "manifest.json").exists():
        step("generating the synthetic world", out=str(root))
        generate_world(root, WorldSpec(seed=s.seed, n_validation=1000))
    else:
        step("using the existing world", out=str(root))
    return World(root)


def prepare_model(s, step: Step) -> Path:
    """The Ad-LLM folder: ``LLMA_ADLLM_MODEL``, else SmolLM2 under ``<data_dir>/models``, prepared once."""
    model_path = s.resolved_adllm_model()
    if s.adllm_backend != "stored" and s.adllm_model is None:
        from llm_auction.models.smollm2 import is_prepared, prepare_smollm2

        if not is_prepared(model_path):
            step("preparing SmolLM2-135M-Instruct (once)", out=str(model_path))
            prepare_smollm2(model_path)
    return model_path


@dataclass
class Pipeline:
    """What a one-process run holds while it runs (see :func:`pipeline`)."""

    settings: Any
    bootstrap: str
    client: Any
    producer: Any
    loop: Any  # consumers.local_loop.LocalLoop
    control: Any  # consumers.control.ControlFollower
    encoder: Any
    simulator: Any
    backend: Any


@contextlib.contextmanager
def pipeline(s, backend, step: Step, score=None, rollout_topic: str | None = None) -> Iterator[Pipeline]:
    """Broker, warehouse (migrated), producer, and the three services on threads, the responder
    following the control topics; everything is stopped on exit (the backend is the caller's).
    ``score``: the pCTR the responder's mechanism arms (``mosaic``, ``slot``) use; ``rollout_topic``:
    the topic the responder routes by (default ``auction.rollout``; the evaluation has its own)."""
    from llm_auction.models.encoder import load_encoder
    from llm_auction.consumers import build
    from llm_auction.infra.broker import broker_for
    from llm_auction.infra.clickhouse import get_client
    from llm_auction.infra.ddl import migrate
    from llm_auction.infra.kafka import ensure_topics, make_producer
    from llm_auction.models.user_sim import make_user_simulator

    encoder = load_encoder()
    simulator = make_user_simulator(s.user_sim_backend, seed=s.seed, encoder=encoder)
    with broker_for(s) as bootstrap:
        step("Kafka is up", bootstrap=bootstrap, embedded=s.kafka_bootstrap is None)
        ensure_topics(s, bootstrap)
        url = s.resolved_clickhouse_url()
        client = get_client(url)
        migrate(client)
        step("ClickHouse is up and migrated", url=url.split("@")[-1])
        producer = make_producer(s, bootstrap)
        control = build.responder_control(s, bootstrap, backend, producer, **({"rollout_topic": rollout_topic} if rollout_topic else {})).start()
        loop = build.local_loop(s, bootstrap, producer, backend, simulator, client, build.candidate_picker(s, encoder), control=control, score=score).start()
        try:
            yield Pipeline(s, bootstrap, client, producer, loop, control, encoder, simulator, backend)
        finally:
            loop.close()
            control.stop()
            producer.close()


def serve(p: Pipeline, world, queries: int, seed: int, run_id: str, show_progress: bool = True, split: str = "test") -> int:
    """Replay ``queries`` queries of ``split`` (fresh bids from ``seed``; ids tagged ``run_id``) and
    wait until every answer and click is in the warehouse; returns the number sent."""
    from llm_auction.producers.replay import ReplayConfig, replay

    before = p.loop.baseline()
    sent = replay(world, p.producer, ReplayConfig(split=split, limit=queries, seed=seed, run_id=run_id, loop=True), progress=False)
    p.loop.wait_drained(sent, show_progress=show_progress, since=before)
    return sent


def generation_stats(backend) -> dict[str, Any]:
    """The Ad-LLM's counters for the closing log line (vLLM: prefix-cache hit rate)."""
    stats = {f"ad-llm.{k}": v for k, v in getattr(backend, "stats", {}).items()}
    if getattr(backend, "stats", None):
        stats["ad-llm.prefix_cache_hit_rate"] = round(backend.prefix_cache_hit_rate, 3)
    return stats
