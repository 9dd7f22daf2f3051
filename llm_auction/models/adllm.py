"""The Ad-LLM interface: what a responder or the IRPO sampler asks of any backend.

An Ad-LLM is the allocation rule of the auction: given queries (profile, question, candidate ads
with bids) it writes answers with ads woven in as ``@Ad Title@[Ad-XXXX]``. Backends differ only
in how they run the model -- transformers (CPU or CUDA) or vLLM (CPU or GPU) -- and share the prompt
(:mod:`llm_auction.models.prompt`), the sampling settings and the policy-version bookkeeping
defined here, so the same policy version gives the same kind of answers on either.

Policies are versions of the weights: the base model the backend was opened with (version
``base_version``), full fine-tuned folders, or LoRA adapters over the base. ``load_policy``
registers a version; ``generate(..., policy_version=...)`` serves any registered one, or one
version per query (a canary rollout mixes versions in one batch).

The backends import this module; the factory that imports the backends is
:mod:`llm_auction.models.backends`, so the dependency points one way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from llm_auction.schemas import CandidateAd, QueryEvent

from .prompt import build_messages, make_demonstration

PolicyKind = Literal["full", "lora"]
CandidateSelector = Callable[[QueryEvent], Sequence[CandidateAd]]


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (a missing package or GPU); the message says which."""


class UnknownPolicy(KeyError):
    """``generate`` was asked for a policy version that was never loaded."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "unknown policy version"


@dataclass
class SamplingConfig:
    """How answers are sampled. Defaults follow Qwen's recommended chat sampling.

    ``temperature == 0`` means greedy decoding. ``max_new_tokens`` is small by default because
    CPU generation is the bottleneck of the local loop (figures: docs/benchmarks.md#figures-behind-defaults-and-code-choices).
    """

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_new_tokens: int = 160
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class AdLLMConfig:
    """Settings shared by every backend (TRL-style: one config object, one class per backend).

    - ``model_path``: local folder of the base model (no hub access at run time; None only for
      the stored-answer backend, which has no model).
    - ``base_version``: the policy version name under which the base model is served.
    - ``demonstration``: add the rotated one-shot exchange (needed for small models to insert).
    - ``batch_size``: prompts per forward batch (each expanded ``n`` times when sampling).
    - ``max_loaded_policies``: fine-tuned versions kept in memory at once (the base is pinned).
    - ``device`` / ``dtype``: ``auto`` picks CUDA + bfloat16 when present, else CPU + float32
      (transformers); vLLM takes the device from its build and bfloat16 on a CPU that has it.
    - ``num_threads``: torch CPU threads while generating (None: leave torch's setting). For a
      small model on a shared machine one thread beats several spinning ones
      (docs/benchmarks.md#figures-behind-defaults-and-code-choices).
    - ``prefix_cache``: for ``n > 1``, read each prompt once and sample ``n`` continuations from
      its repeated KV cache, instead of ``n`` copies of the prompt (transformers backend).
    """

    model_path: str | Path | None
    base_version: str = "base"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    demonstration: bool = True
    batch_size: int = 8
    max_loaded_policies: int = 4
    device: str = "auto"
    dtype: str = "auto"
    num_threads: int | None = None
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        self.model_path = None if self.model_path is None else Path(self.model_path)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_loaded_policies < 1:
            raise ValueError(f"max_loaded_policies must be >= 1, got {self.max_loaded_policies}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")


@runtime_checkable
class AdLLM(Protocol):
    """The allocation rule: queries in, ad-integrated answers out."""

    config: AdLLMConfig

    def generate(self, queries: list[QueryEvent], policy_version: str | Sequence[str], n: int = 1) -> list[list[str]]:
        """``n`` sampled answers per query (completion text only), in query order; ``policy_version``
        is one version for all queries or one per query."""
        ...

    def load_policy(self, version: str, uri: str, kind: PolicyKind = "full") -> None:
        """Register policy ``version``: full weights in folder ``uri`` or a LoRA adapter over the base."""
        ...

    @property
    def versions(self) -> list[str]:
        """The policy versions this backend can serve."""
        ...

    def close(self) -> None:
        """Release the model (and any engine process); the backend cannot generate afterwards."""
        ...


def per_query_versions(queries: Sequence[QueryEvent], policy_version: str | Sequence[str]) -> list[str]:
    """``generate``'s ``policy_version`` argument as one version per query (checked)."""
    if isinstance(policy_version, str):
        return [policy_version] * len(queries)
    versions = list(policy_version)
    if len(versions) != len(queries):
        raise ValueError(f"generate: {len(versions)} policy versions for {len(queries)} queries")
    return versions


def prompt_messages(query: QueryEvent, demonstration: bool, select: CandidateSelector | None = None) -> list[dict]:
    """The chat messages a backend sends for ``query`` (candidates optionally narrowed by ``select``)."""
    candidates = list(select(query)) if select is not None else list(query.candidates)
    demo = make_demonstration(query, candidates) if demonstration else None
    return build_messages(query, candidates, demo)


def check_policy_args(version: str, uri: str | Path, kind: str) -> Path:
    """Validate ``load_policy`` arguments once for all backends; returns the folder."""
    if not version:
        raise ValueError("load_policy: empty version name")
    if kind not in ("full", "lora"):
        raise ValueError(f"load_policy: kind must be 'full' or 'lora', got {kind!r}")
    path = Path(uri)
    if not path.is_dir():
        raise FileNotFoundError(f"load_policy {version}: no folder at {path}")
    marker = "adapter_config.json" if kind == "lora" else "config.json"
    if not (path / marker).exists():
        raise FileNotFoundError(f"load_policy {version}: {path} has no {marker} (is it a {kind} policy?)")
    return path
