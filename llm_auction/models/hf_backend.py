"""The transformers backend of the Ad-LLM: CPU (the local loop, the tests) or one CUDA GPU.

Prompts are batched and left-padded (decoder-only models continue from the right edge), and
left-truncated to what the model's context leaves after ``max_new_tokens`` (and to the
tokenizer's ``model_max_length``), so a small model -- the tiny GPT-2 reads 64 prompt tokens --
keeps the question and drops the oldest system text rather than failing. Sampling is seeded with ``torch.manual_seed`` at the start of every call, so a
call with the same queries, policy and seed returns the same answers (tests rely on it).

Policy versions: the base model is pinned; full-weight folders and LoRA adapters are loaded on
first use and kept in a small LRU. A LoRA version is merged into a private copy of its base
(``merge_and_unload``), so serving it costs exactly what serving the base does and several
versions can be held side by side.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from llm_auction.logs import log_event
from llm_auction.schemas import QueryEvent

from .adllm import AdLLMConfig, CandidateSelector, PolicyKind, UnknownPolicy, check_policy_args, per_query_versions, prompt_messages
from .prompt import render_prompt

log = logging.getLogger(__name__)

MIN_PROMPT_TOKENS = 32


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise ValueError(f"unknown dtype {dtype!r}") from None


def max_positions(model_config) -> int | None:
    """The model's context length, whatever its architecture calls it."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        v = getattr(model_config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


class TransformersAdLLM:
    """Ad-LLM on transformers: ``generate`` for answers, ``load_policy`` for new versions."""

    def __init__(self, config: AdLLMConfig, select: CandidateSelector | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.select = select
        path = Path(config.model_path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"transformers backend: no model folder at {path} (config.json missing)")
        self.device = _resolve_device(config.device)
        self.dtype = _resolve_dtype(config.dtype, self.device)
        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.base_model = self._open(AutoModelForCausalLM, path)
        self._specs: dict[str, tuple[Path, PolicyKind, str | None]] = {}
        self._loaded: OrderedDict[str, object] = OrderedDict()
        log_event(
            log, "ad-llm opened", backend="transformers", model=str(path), device=self.device,
            dtype=str(self.dtype).removeprefix("torch."), seconds=round(time.perf_counter() - t0, 2),
        )

    # ------------------------------------------------------------------ policies
    def _open(self, auto_cls, path: Path):
        model = auto_cls.from_pretrained(str(path), dtype=self.dtype, local_files_only=True)
        return model.to(self.device).eval()

    @property
    def versions(self) -> list[str]:
        return [self.config.base_version, *self._specs]

    @property
    def loaded_versions(self) -> list[str]:
        """Versions in memory now (base first, then least recently used first)."""
        return [self.config.base_version, *self._loaded]

    def load_policy(self, version: str, uri: str | Path, kind: PolicyKind = "full", *, base: str | None = None) -> None:
        """Register and load ``version``: full weights in ``uri``, or a LoRA adapter applied to ``base``.

        ``base`` names an already registered version the adapter was trained on (default: the
        base model). The tokenizer is the base model's: policies are fine-tunes of it.
        """
        if version == self.config.base_version:
            raise ValueError(f"load_policy: {version!r} is the base model's version name")
        path = check_policy_args(version, uri, kind)
        if base is not None and base not in self.versions:
            raise UnknownPolicy(f"load_policy {version}: base version {base!r} is not loaded (known: {self.versions})")
        self._specs[version] = (path, kind, base)
        self._loaded.pop(version, None)
        self._model(version)  # load now: a broken policy fails at publication, not at serving

    def _model(self, version: str):
        if version == self.config.base_version:
            return self.base_model
        if version in self._loaded:
            self._loaded.move_to_end(version)
            return self._loaded[version]
        if version not in self._specs:
            raise UnknownPolicy(f"policy version {version!r} is not loaded (known: {self.versions})")
        path, kind, base = self._specs[version]
        t0 = time.perf_counter()
        if kind == "full":
            from transformers import AutoModelForCausalLM

            model = self._open(AutoModelForCausalLM, path)
        else:
            from peft import PeftModel

            base_model = self._model(base) if base else self.base_model
            model = PeftModel.from_pretrained(copy.deepcopy(base_model), str(path)).merge_and_unload().eval()
        self._loaded[version] = model
        while len(self._loaded) > self.config.max_loaded_policies:
            evicted, _ = self._loaded.popitem(last=False)
            log_event(log, "policy evicted", version=evicted)
        log_event(log, "policy loaded", version=version, kind=kind, uri=str(path), seconds=round(time.perf_counter() - t0, 2))
        return model

    # ---------------------------------------------------------------- generation
    @staticmethod
    def _generate_shared_prefix(model, enc: dict, gen, n: int):
        """Sample ``n`` continuations per prompt, reading each prompt once.

        ``generate(num_return_sequences=n)`` copies every prompt ``n`` times before the forward
        pass, so on CPU the prompt (1,000+ tokens with the ad list) is paid ``n`` times -- it
        dominated the time of IRPO sampling. Here the prompt minus its last token is run once,
        its KV cache is repeated ``n`` times, and generation continues from there (the last
        prompt token is fed by ``generate`` itself, as with any reused prompt cache).
        """
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if ids.shape[1] < 2:
            return model.generate(**enc, generation_config=gen.__class__(**{**gen.to_dict(), "num_return_sequences": n}))
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        pre = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True)
        cache = pre.past_key_values
        cache.batch_repeat_interleave(n)
        return model.generate(
            input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
            past_key_values=cache, generation_config=gen,
        )

    def prompts(self, queries: list[QueryEvent]) -> list[str]:
        """The rendered prompt of each query (what the model is conditioned on)."""
        return [render_prompt(self.tokenizer, prompt_messages(q, self.config.demonstration, self.select)) for q in queries]

    def _prompt_budget(self, model) -> int | None:
        """Prompt tokens kept (from the right): the context left after the answer, and no more
        than the tokenizer's ``model_max_length`` when it declares a real one (the tiny model does)."""
        ctx = max_positions(model.config)
        declared = getattr(self.tokenizer, "model_max_length", None)
        declared = declared if isinstance(declared, int) and 0 < declared < 10**7 else None
        if ctx is None:
            return declared
        budget = ctx - self.config.sampling.max_new_tokens
        if declared is not None:
            budget = min(budget, declared)
        if budget < MIN_PROMPT_TOKENS:
            raise ValueError(
                f"max_new_tokens={self.config.sampling.max_new_tokens} leaves {budget} prompt tokens of the "
                f"model's {ctx}-token context (need >= {MIN_PROMPT_TOKENS})"
            )
        return budget

    def close(self) -> None:
        """Drop the loaded policies (the base model goes with the object): nothing runs outside this process."""
        self._loaded.clear()

    def generate(
        self, queries: list[QueryEvent], policy_version: str | Sequence[str], n: int = 1, *, seed: int | None = None
    ) -> list[list[str]]:
        """``n`` answers per query from ``policy_version`` (one, or one per query: each version's
        queries run as their own batches); ``seed`` overrides the config's."""
        import torch

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not queries:
            return []
        versions = per_query_versions(queries, policy_version)
        groups: dict[str, list[int]] = {}
        for i, v in enumerate(versions):
            groups.setdefault(v, []).append(i)
        models = {v: self._model(v) for v in groups}  # an unknown version fails before any work
        threads = torch.get_num_threads()
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        out: list[list[str] | None] = [None] * len(queries)
        try:
            for v, idx in groups.items():
                for i, texts in zip(idx, self._generate(models[v], [queries[i] for i in idx], v, n, seed)):
                    out[i] = texts
        finally:
            torch.set_num_threads(threads)
        return out  # type: ignore[return-value]

    def _generate(self, model, queries: list[QueryEvent], policy_version: str, n: int, seed: int | None) -> list[list[str]]:
        import torch
        from transformers import GenerationConfig

        s = self.config.sampling
        torch.manual_seed(s.seed if seed is None else seed)
        # Greedy decoding gives one answer per prompt; it is computed once and repeated n times.
        n_total, n = n, (1 if s.greedy else n)
        gen = GenerationConfig(
            max_new_tokens=s.max_new_tokens,
            do_sample=not s.greedy,
            num_return_sequences=1 if (self.config.prefix_cache or n == 1) else n,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=model.generation_config.eos_token_id or self.tokenizer.eos_token_id,
            **({} if s.greedy else {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k}),
        )
        budget = self._prompt_budget(model)
        prompts = self.prompts(queries)
        batches = [prompts[i : i + self.config.batch_size] for i in range(0, len(prompts), self.config.batch_size)]
        out: list[list[str]] = []
        t0 = time.perf_counter()
        new_tokens = truncated = 0
        for batch in tqdm(batches, desc=f"generate {policy_version}", unit="batch", disable=len(batches) < 2):
            enc = self.tokenizer(
                batch, return_tensors="pt", padding=True, add_special_tokens=False,
                truncation=budget is not None, max_length=budget,
            )
            if budget is not None:
                full = self.tokenizer(batch, add_special_tokens=False, return_length=True, verbose=False)["length"]
                truncated += sum(1 for length in full if length > budget)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                if n > 1 and self.config.prefix_cache:
                    seqs = self._generate_shared_prefix(model, enc, gen, n)
                else:
                    seqs = model.generate(**enc, generation_config=gen)
            completions = seqs[:, enc["input_ids"].shape[1] :]
            new_tokens += int((completions != self.tokenizer.pad_token_id).sum())
            texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
            out.extend([t.strip() for t in texts[i * n : (i + 1) * n]] * (n_total // n) for i in range(len(batch)))
        log_event(
            log, "generated", backend="transformers", policy_version=policy_version, queries=len(queries), n=n_total,
            new_tokens=new_tokens, truncated_prompts=truncated, seconds=round(time.perf_counter() - t0, 2),
        )
        return out
