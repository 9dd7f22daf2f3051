"""The one Ad-LLM factory: a backend by name, for the services, the IRPO sampler and the CLI.

It imports the backends (each imports :mod:`llm_auction.models.adllm` for the shared types), so
the protocol module never imports an implementation and no import circle forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .adllm import AdLLM, AdLLMConfig, CandidateSelector, SamplingConfig

BackendName = Literal["vllm", "transformers", "stored"]


def open_backend(
    settings,
    *,
    backend: BackendName | None = None,
    model: str | Path | None = None,
    sampling: SamplingConfig | None = None,
    batch_size: int | None = None,
    base_version: str | None = None,
    select: CandidateSelector | None = None,
    **config_overrides,
) -> AdLLM:
    """The Ad-LLM backend configured from settings: the one builder for the responder, the
    learning loop, IRPO's sampler and ``irpo evaluate``, so each samples as the responder serves.

    ``backend`` defaults to ``LLMA_ADLLM_BACKEND``, ``model`` to ``settings.resolved_adllm_model()``
    (which must hold a model, except for ``stored``), ``sampling`` to the responder's
    (``LLMA_ADLLM_MAX_NEW_TOKENS``, ``LLMA_SEED``), ``batch_size`` to ``LLMA_ADLLM_BATCH_SIZE``,
    ``base_version`` (the name the base model is served under) to ``LLMA_POLICY_VERSION``; a vLLM
    engine takes ``LLMA_VLLM_*``. ``select`` and ``config_overrides`` (``AdLLMConfig`` fields) are
    for commands that vary the prompt on purpose (``models generate``).
    """
    name = backend or settings.adllm_backend
    path = None
    if name != "stored":
        path = Path(model or settings.resolved_adllm_model())
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"no Ad-LLM model at {path} (prepare one with `llm-auction models prepare-smollm2 --out {path}`, "
                "set LLMA_ADLLM_MODEL, or pass --model)"
            )
    engine = None
    if name == "vllm":
        from .vllm_backend import VLLMEngineConfig

        engine = VLLMEngineConfig(
            kv_cache_gb=settings.vllm_kv_cache_gb, cpu_threads=settings.vllm_cpu_threads,
            max_lora_rank=settings.vllm_max_lora_rank, max_loras=settings.vllm_max_loras,
        )
    return make_backend(
        name, path, engine=engine, batch_size=batch_size or settings.adllm_batch_size,
        sampling=sampling or SamplingConfig(max_new_tokens=settings.adllm_max_new_tokens, seed=settings.seed),
        base_version=base_version or settings.policy_version, select=select, **{"num_threads": settings.adllm_threads, **config_overrides},
    )


def make_backend(
    name: BackendName,
    model_path: str | Path | None = None,
    *,
    sampling: SamplingConfig | None = None,
    select: CandidateSelector | None = None,
    engine=None,
    engine_kwargs: dict | None = None,
    **config_kwargs,
) -> AdLLM:
    """Open a backend by name: ``vllm`` or ``transformers`` over a local model folder, or
    ``stored`` (a fixed answer naming the highest bid, no model: for plumbing benchmarks).

    ``select`` narrows each query's candidates before prompting (the responder's
    :func:`llm_auction.models.retrieval.candidate_picker`); by default every candidate is listed.
    ``engine`` (:class:`~llm_auction.models.vllm_backend.VLLMEngineConfig`) and ``engine_kwargs`` (passed
    to ``vllm.LLM``) are for the vllm backend only; ``config_kwargs`` go to :class:`AdLLMConfig`.
    """
    if name not in ("vllm", "transformers", "stored"):
        raise ValueError(f"unknown Ad-LLM backend {name!r} (choose 'vllm', 'transformers' or 'stored')")
    if name != "vllm" and (engine_kwargs or engine is not None):
        raise ValueError("engine settings and engine_kwargs are for the vllm backend only")
    if name != "stored" and model_path is None:
        raise ValueError(f"the {name} backend needs a model folder")
    config = AdLLMConfig(model_path=model_path, sampling=sampling or SamplingConfig(), **config_kwargs)
    if name == "transformers":
        from .hf_backend import TransformersAdLLM

        return TransformersAdLLM(config, select=select)
    if name == "vllm":
        from .vllm_backend import VLLMAdLLM

        return VLLMAdLLM(config, select=select, engine=engine, **(engine_kwargs or {}))
    from .stored_backend import StoredAnswerBackend

    return StoredAnswerBackend(config)
