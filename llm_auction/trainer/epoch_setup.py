"""One IRPO epoch assembled from settings: the one builder every caller uses.

:func:`~llm_auction.trainer.irpo.run_epoch` takes its parts ready-made; :func:`run_configured_epoch`
makes them the one way ``irpo run-epoch``, the trainer service (epochs the stream app requests)
and the learning loop need, so an epoch samples, scores and trains the same whoever runs it:

- the serving backend: ``models.backends.open_backend`` (configured as the responder's), or the
  loop's own serving engine, which already serves the parent;
- the reward: ``trainer.reward.open_reward`` with the config's mode (``pctr``, ``oracle``, ``auto``);
- the candidates: the responder's picker (``models.retrieval.candidate_picker``);
- the parent: its adapter loaded, or merged into the base where the engine serves a full model
  faster than an adapter (:func:`load_version`).

The world is passed in opened (``producers.world.World``): the trainer layer does not import the
producers. Nothing here opens the warehouse: with embedded ClickHouse the stream app holds its
chdb folder, and an epoch needs only the world's split and the registry. Nothing here announces:
the caller does, through ``producers.versions.announce``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .dpo import merge_adapter
from .irpo import BASE_VERSION, EpochResult, run_epoch
from .irpo_config import IRPOConfig
from .registry import ModelRegistry
from .reward import Reward, open_reward


def load_version(backend, version: str, registry: ModelRegistry, model, merge: bool | None, scratch: Path) -> None:
    """Make ``backend`` serve policy ``version``: its adapter, or (``merge``) the adapter merged into the base.

    ``merge=None``: merge on a CPU vLLM engine, which serves adapters much slower than the base
    (docs/benchmarks.md, ``LLMA_VLLM_CPU_LORA_OPS``), else not.
    """
    folder = registry.get(version).to_event().uri
    if merge is None:
        merge = getattr(backend, "device", None) == "cpu" and type(backend).__name__ == "VLLMAdLLM"
    if merge:
        backend.load_policy(version, merge_adapter(Path(model), Path(folder), scratch / version), kind="full")
    else:
        backend.load_policy(version, folder, kind="lora")


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
    offset advances by ``cfg.queries`` per generation and wraps within the split, so epochs run
    one after another see new queries (as the paper's Algorithm 1 does)."""
    starts = max(1, split_size - cfg.queries + 1)  # valid offsets: 0 .. split_size - queries
    return dataclasses.replace(cfg, query_offset=(cfg.query_offset + parent_generation * cfg.queries) % starts)


def run_configured_epoch(
    cfg: IRPOConfig,
    *,
    world,
    model: Path,
    registry: ModelRegistry,
    parent: str | None,
    encoder,
    settings,
    pctr_version: str | None = None,
    reward: Reward | None = None,
    backend=None,
    merge_lora: bool | None = None,
    data_window_extra: dict[str, Any] | None = None,
) -> EpochResult:
    """One epoch from ``parent`` (None: the base model); returns ``irpo.EpochResult``, published, not announced.

    ``reward`` defaults to ``open_reward(cfg.reward, pctr_version=...)`` (``pctr_version`` None:
    the latest promoted). ``backend`` None opens the serving backend of ``cfg.backend`` over
    ``model``, loads ``parent`` and closes it once the answers are sampled, so DPO has the cores;
    a given ``backend`` (the loop's serving engine) must already serve ``parent`` and stays open.
    """
    from llm_auction.models.retrieval import candidate_picker

    reward = reward or open_reward(cfg.reward, settings=settings, encoder=encoder, registry_root=registry.root, pctr_version=pctr_version)
    parts = dict(world=world, base_model=Path(model), registry=registry, reward=reward, parent=parent,
                 pick=candidate_picker(cfg.candidates_k, encoder), data_window_extra=data_window_extra)
    if backend is not None:
        return run_epoch(cfg, backend=backend, **parts)
    with open_sampler(cfg, settings, model, registry, [parent] if parent else [], merge_lora) as sampler:
        return run_epoch(cfg, backend=sampler, close_backend=True, **parts)


@contextlib.contextmanager
def open_sampler(cfg: IRPOConfig, settings, model, registry: ModelRegistry, versions, merge_lora: bool | None = None) -> Iterator:
    """The serving backend of ``cfg.backend`` sampling with ``cfg``'s settings, serving the base as
    ``base`` and each of ``versions`` (:func:`load_version`); closed on exit (and its scratch folder removed)."""
    from llm_auction.models.adllm import SamplingConfig
    from llm_auction.models.backends import open_backend

    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens, seed=cfg.sample_seed)
    backend = open_backend(settings, backend=cfg.backend, model=model, sampling=sampling, batch_size=cfg.sample_batch_size, base_version=BASE_VERSION)
    try:
        with tempfile.TemporaryDirectory(prefix="llma-merged-") as scratch:
            for v in versions:
                if v != BASE_VERSION:
                    load_version(backend, v, registry, model, merge_lora, Path(scratch))
            yield backend
    finally:
        backend.close()

__all__ = ["generation", "load_version", "next_queries", "open_sampler", "run_configured_epoch"]
