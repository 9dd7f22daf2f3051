"""The one Ad-LLM factory: a backend by name, for the services, the IRPO sampler and the CLI.

It imports the backends (each imports :mod:`llm_auction.models.adllm` for the shared types), so
the protocol module never imports an implementation and no import circle forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .adllm import AdLLM, AdLLMConfig, CandidateSelector, SamplingConfig

BackendName = Literal["vllm", "transformers", "stored"]


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
