"""One IRPO epoch assembled from settings: the serving backend, the reward, the parent version, the announcer.

:func:`~llm_auction.trainer.irpo.run_epoch` takes its parts ready-made; this module makes them the
one way both callers need: ``llm-auction irpo run-epoch`` (an epoch by hand) and the trainer
service (``llm-auction serve trainer``, epochs the stream app requests). So an epoch the stream
triggers samples, scores and trains exactly as one run by hand with the same flags.

- :func:`open_backend`: the serving backend configured as the responder's (``LLMA_VLLM_*`` for vLLM);
- :func:`open_reward`: the promoted (or a named) pCTR version through onnxruntime, or the user
  simulator's exact click probabilities (``oracle``);
- :func:`load_version`: make the backend serve a policy version (its LoRA adapter, or the adapter
  merged into the base: vLLM on a CPU served adapters ~6x slower than the base, docs/irpo.md);
- :func:`announcer`: announce on ``auction.policy-versions`` once (or None without a broker);
- :func:`run_configured_epoch`: the above around ``run_epoch``, the backend closed before DPO.

The world is passed in opened (``producers.world.World``): the trainer layer does not import the
producers. Nothing here opens the warehouse: with embedded ClickHouse the stream app holds its
chdb folder, and an epoch needs only the world's train split and the registry.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .irpo_config import IRPOConfig
from .registry import Manifest, ModelRegistry


def base_model_dir(model: str | Path | None, settings) -> Path:
    """The Ad-LLM base model folder: ``model``, else ``LLMA_ADLLM_MODEL``, else ``<data_dir>/models/smollm2``."""
    path = Path(model or settings.adllm_model or settings.data_dir / "models" / "smollm2")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no base model at {path} (prepare one: `llm-auction models prepare-smollm2 --out {path}`, or pass --model)")
    return path


def open_backend(name: str, model, sampling, batch_size: int, settings):
    """The serving backend, configured as the responder's (``LLMA_VLLM_*`` for vLLM)."""
    from llm_auction.models.backends import make_backend

    if name == "vllm":
        from llm_auction.models.vllm_backend import VLLMEngineConfig

        s = settings
        engine = VLLMEngineConfig(kv_cache_gb=s.vllm_kv_cache_gb, cpu_threads=s.vllm_cpu_threads, max_lora_rank=s.vllm_max_lora_rank, max_loras=s.vllm_max_loras)
        return make_backend("vllm", model, sampling=sampling, engine=engine, batch_size=batch_size)
    return make_backend("transformers", model, sampling=sampling, batch_size=batch_size, num_threads=settings.adllm_threads)


def open_reward(registry_root: Path, pctr_version: str | None, encoder, oracle: bool, settings) -> tuple[Callable, str]:
    """(pCTR function, its version name): the simulator's exact probabilities (``oracle``), or the
    ONNX pCTR ``pctr_version`` (None: the latest promoted one) of the registry at ``registry_root``."""
    from . import irpo

    if oracle:
        from llm_auction.models.user_sim import make_user_simulator

        return irpo.oracle_pctr(make_user_simulator("embedding", seed=settings.seed, encoder=encoder)), "oracle"
    from llm_auction.models.pctr import PctrScorer

    preg = ModelRegistry(registry_root, "pctr")
    pm = preg.get(pctr_version) if pctr_version else preg.latest()
    if pm is None:
        raise FileNotFoundError(f"registry {preg.dir}: no promoted pCTR version (train one: `llm-auction pctr train`, or use --oracle)")
    return irpo.onnx_pctr(PctrScorer(pm.artifact_path, encoder=encoder)), pm.version


def load_version(backend, version: str, registry: ModelRegistry, model, merge: bool | None, scratch: Path) -> None:
    """Make ``backend`` serve policy ``version``: its adapter, or (``merge``) the adapter merged into the base.

    ``merge=None``: merge on a CPU vLLM engine (it served adapters ~6x slower than the base), else not.
    """
    from .irpo import merge_adapter

    folder = registry.get(version).to_event().uri
    if merge is None:
        merge = getattr(backend, "device", None) == "cpu" and type(backend).__name__ == "VLLMAdLLM"
    if merge:
        backend.load_policy(version, merge_adapter(Path(model), Path(folder), scratch / version), kind="full")
    else:
        backend.load_policy(version, folder, kind="lora")


def announcer(registry: ModelRegistry, settings, bootstrap: str | None = None) -> Callable[[Manifest], bool] | None:
    """A callable announcing a manifest on ``auction.policy-versions`` once, or None without a broker
    (``bootstrap``, else ``LLMA_KAFKA_BOOTSTRAP``)."""
    bootstrap = bootstrap or settings.kafka_bootstrap
    if not bootstrap:
        return None

    def send(manifest: Manifest) -> bool:
        from llm_auction.infra.kafka import ensure_topics, make_producer
        from llm_auction.schemas.topics import POLICY_VERSIONS

        from .irpo import announce

        ensure_topics(settings, bootstrap)
        producer = make_producer(settings, bootstrap)
        try:
            return announce(registry, manifest, producer, POLICY_VERSIONS)
        finally:
            producer.close()

    return send


def generation(registry: ModelRegistry, parent: str | None) -> int:
    """How many epochs led to ``parent`` (0: the base model): its ancestors in the registry, itself included."""
    n, seen = 0, set()
    while parent and parent not in seen:
        seen.add(parent)
        n += 1
        parent = registry.get(parent).parent
    return n


def next_queries(cfg: IRPOConfig, split_size: int, parent_generation: int) -> IRPOConfig:
    """``cfg`` moved to the offline queries of the epoch after ``parent_generation`` epochs: the
    offset advances by ``cfg.queries`` per generation and wraps within the split, so epochs the
    stream triggers one after another see new queries (as the paper's Algorithm 1 does)."""
    import dataclasses

    starts = max(1, split_size - cfg.queries + 1)  # valid offsets: 0 .. split_size - queries
    return dataclasses.replace(cfg, query_offset=(cfg.query_offset + parent_generation * cfg.queries) % starts)


def run_configured_epoch(
    cfg: IRPOConfig,
    *,
    world,
    model: Path,
    registry: ModelRegistry,
    parent: str | None,
    pctr_version: str | None,
    encoder,
    settings,
    merge_lora: bool | None = None,
    announce: Callable[[Manifest], bool] | None = None,
    data_window_extra: dict[str, Any] | None = None,
):
    """One epoch from ``parent`` (None: the base model) scored by ``pctr_version`` (None: the latest
    promoted; ignored with ``cfg.oracle``); returns ``irpo.EpochResult``. The serving backend is
    opened here and closed once the answers are sampled, so DPO has the cores."""
    from llm_auction.models.adllm import SamplingConfig
    from llm_auction.models.retrieval import candidate_picker

    from . import irpo

    pctr, used_pctr = open_reward(registry.root, pctr_version, encoder, cfg.oracle, settings)
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens, seed=cfg.sample_seed)
    backend = open_backend(cfg.backend, model, sampling, cfg.sample_batch_size, settings)
    try:
        with tempfile.TemporaryDirectory(prefix="llma-merged-") as scratch:
            if parent:
                load_version(backend, parent, registry, model, merge_lora, Path(scratch))
            return irpo.run_epoch(
                cfg, world=world, backend=backend, base_model=Path(model), registry=registry, pctr=pctr, pctr_version=used_pctr,
                parent=parent, pick=candidate_picker(cfg.candidates_k, encoder), announcer=announce, close_backend=True,
                data_window_extra=data_window_extra,
            )
    finally:
        backend.close()


__all__ = ["announcer", "base_model_dir", "generation", "load_version", "next_queries", "open_backend", "open_reward", "run_configured_epoch"]
