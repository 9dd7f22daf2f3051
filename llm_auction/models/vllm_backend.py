"""The vLLM backend of the Ad-LLM: the GPU path (Qwen3-4B-Instruct in the paper's setting).

Same prompt (rendered with the model's own chat template through vLLM's tokenizer) and the
same sampling settings as the transformers backend, so a policy behaves alike on both. vLLM
samples ``n`` answers per prompt natively and shares the prompt's KV blocks among them.

Policy versions:
- LoRA adapters are served side by side from one engine: each version gets its own
  ``LoRARequest`` (a stable integer id), so the responder can route queries to several
  versions at once (canary rollouts) without reloading anything.
- Full-weight versions need their own engine. Only one engine fits the GPU at a time, so
  serving a full version other than the current one rebuilds the engine (logged, slow); roll
  out full versions rarely, LoRA versions freely.

vLLM is imported only here and only when a backend is built; without it (or without a CUDA
GPU) construction raises :class:`BackendUnavailable` with a one-line reason.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from llm_auction.logs import log_event
from llm_auction.schemas import QueryEvent

from .adllm import AdLLMConfig, BackendUnavailable, CandidateSelector, PolicyKind, UnknownPolicy, check_policy_args, prompt_messages
from .prompt import render_prompt

log = logging.getLogger(__name__)


def _require_vllm():
    """Import vllm, or say in one line why this backend cannot run here."""
    try:
        import vllm
    except ImportError as e:
        raise BackendUnavailable(
            f"vllm backend: the 'vllm' package cannot be imported ({e}); "
            "install the gpu extra (pip install 'llm-auction-stream[gpu]') on a CUDA machine, or use the transformers backend"
        ) from None
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        raise BackendUnavailable("vllm backend: no CUDA GPU is visible (torch.cuda.is_available() is False); use the transformers backend on CPU")
    return vllm


class VLLMAdLLM:
    """Ad-LLM on vLLM; same interface as :class:`~llm_auction.models.hf_backend.TransformersAdLLM`.

    Extra engine arguments (``gpu_memory_utilization``, ``max_model_len``, ``max_lora_rank``,
    ...) pass through ``engine_kwargs``.
    """

    def __init__(self, config: AdLLMConfig, select: CandidateSelector | None = None, **engine_kwargs):
        self._vllm = _require_vllm()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.config = config
        self.select = select
        if not (Path(config.model_path) / "config.json").exists():
            raise FileNotFoundError(f"vllm backend: no model folder at {config.model_path} (config.json missing)")
        self.engine_kwargs = {"enable_lora": True, "max_loras": config.max_loaded_policies, "max_lora_rank": 64, **engine_kwargs}
        self._lora: dict[str, object] = {}  # version -> LoRARequest
        self._full: dict[str, Path] = {}  # version -> folder
        self._next_lora_id = 1
        self._engine_version = config.base_version
        self._engine = self._open(Path(config.model_path))

    def _open(self, path: Path):
        t0 = time.perf_counter()
        dtype = "auto" if self.config.dtype == "auto" else self.config.dtype
        engine = self._vllm.LLM(model=str(path), dtype=dtype, seed=self.config.sampling.seed, **self.engine_kwargs)
        log_event(log, "ad-llm opened", backend="vllm", model=str(path), seconds=round(time.perf_counter() - t0, 2))
        return engine

    @property
    def versions(self) -> list[str]:
        return [self.config.base_version, *self._full, *self._lora]

    def load_policy(self, version: str, uri: str | Path, kind: PolicyKind = "full") -> None:
        """LoRA: register an adapter (served alongside the others). Full: remember the folder;
        the engine is rebuilt on it when that version is first asked for."""
        if version == self.config.base_version:
            raise ValueError(f"load_policy: {version!r} is the base model's version name")
        path = check_policy_args(version, uri, kind)
        if kind == "lora":
            from vllm.lora.request import LoRARequest

            self._lora[version] = LoRARequest(version, self._next_lora_id, str(path))
            self._next_lora_id += 1
        else:
            self._full[version] = path
        log_event(log, "policy registered", backend="vllm", version=version, kind=kind, uri=str(path))

    def _engine_for(self, version: str):
        """(engine, lora_request) serving ``version``."""
        if version in self._lora:
            if self._engine_version != self.config.base_version:
                self._engine = self._open(Path(self.config.model_path))
                self._engine_version = self.config.base_version
            return self._engine, self._lora[version]
        if version == self.config.base_version or version in self._full:
            if version != self._engine_version:
                log_event(log, "rebuilding vllm engine for a full-weight policy", version=version, previous=self._engine_version)
                del self._engine
                path = Path(self.config.model_path) if version == self.config.base_version else self._full[version]
                self._engine = self._open(path)
                self._engine_version = version
            return self._engine, None
        raise UnknownPolicy(f"policy version {version!r} is not loaded (known: {self.versions})")

    def prompts(self, queries: list[QueryEvent]) -> list[str]:
        tok = self._engine.get_tokenizer()
        return [render_prompt(tok, prompt_messages(q, self.config.demonstration, self.select)) for q in queries]

    def generate(self, queries: list[QueryEvent], policy_version: str, n: int = 1, *, seed: int | None = None) -> list[list[str]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not queries:
            return []
        engine, lora = self._engine_for(policy_version)
        s = self.config.sampling
        params = self._vllm.SamplingParams(
            n=n,
            temperature=s.temperature,
            top_p=s.top_p if not s.greedy else 1.0,
            top_k=s.top_k if (s.top_k and not s.greedy) else -1,
            max_tokens=s.max_new_tokens,
            seed=s.seed if seed is None else seed,
        )
        t0 = time.perf_counter()
        results = engine.generate(self.prompts(queries), params, lora_request=lora, use_tqdm=len(queries) > 8)
        out = [[o.text.strip() for o in r.outputs] for r in results]
        log_event(
            log, "generated", backend="vllm", policy_version=policy_version, queries=len(queries), n=n,
            seconds=round(time.perf_counter() - t0, 2),
        )
        return out
