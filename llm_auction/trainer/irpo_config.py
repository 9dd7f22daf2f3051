"""``IRPOConfig``: every setting of one IRPO epoch, in one dataclass (the style of TRL's ``DPOConfig``).

Each field carries its help text in ``metadata["help"]``; the command line of ``irpo run-epoch``
and ``serve trainer`` is generated from it (``cli/args.add_config_arguments``), so a default and
its explanation are written once, here. Fields are grouped by concern: the offline set, sampling,
the reward (Eq. 8), pairing, DPO (TRL ``DPOConfig``) and LoRA (PEFT ``LoraConfig``).

Presets: :meth:`IRPOConfig.paper` (the paper's appendix B.2 values, for a GPU) and
:meth:`IRPOConfig.cpu` (the class defaults, for small models on 2 CPU cores). The measurements
behind the CPU defaults are in docs/benchmarks.md ("The CPU IRPO preset") and docs/irpo.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

PAIRINGS = ("all", "worst")
BACKENDS = ("transformers", "vllm")
REWARDS = ("pctr", "oracle", "auto")
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")


def _f(default: Any, help: str, *aliases: str) -> Any:
    """A field with its help text (and extra command-line names) in the metadata."""
    meta = {"help": help, **({"aliases": list(aliases)} if aliases else {})}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class IRPOConfig:
    """Settings of one IRPO epoch; each field's help is in its metadata (module docstring)."""

    # -- data: the offline set of this epoch
    queries: int = _f(32, "queries in the offline set, taken from the world's split in file order from query_offset")
    split: Literal["train", "test"] = _f("train", "world split the offline set comes from (test is held out for evaluation)")
    query_offset: int = _f(0, "index of the first query of the split; successive epochs move it to see new queries", "--offset")
    bid_seed: int = _f(0, "seed of this epoch's bids, mixed with the parent version so every epoch redraws them (the policy must read bids, not memorize them)")
    bid_low: int = _f(1, "lowest redrawn bid, inclusive (paper: 1)")
    bid_high: int = _f(100, "highest redrawn bid, inclusive (paper: 100)")
    candidates_k: int | None = _f(8, "candidates listed in the prompt: the top k by relevance, through the responder's own picker; None lists all")
    # -- sampling: answers from the policy the epoch starts from
    samples_per_query: int = _f(5, "M, answers sampled per query (paper: 5)", "--samples")
    temperature: float = _f(0.7, "sampling temperature (> 0: greedy decoding gives M identical answers, no pairs)")
    top_p: float = _f(0.8, "nucleus sampling mass")
    top_k: int = _f(20, "sample among the k most likely tokens (0: off)")
    max_new_tokens: int = _f(96, "answer length limit when sampling")
    sample_seed: int = _f(0, "seed of the sampler")
    backend: Literal["transformers", "vllm"] = _f("transformers", "serving backend that samples; closed before DPO starts")
    sample_batch_size: int = _f(8, "prompts per generation batch")
    # -- reward: Eq. 8
    delta_th: float = _f(10.0, "a sample is a loser when the winner's reward exceeds its own by more than this (paper: 10)")
    lam: float = _f(1.0, "lambda of Eq. 8, the weight of the ad-count and format-error penalty (paper: 1)")
    reward: Literal["pctr", "oracle", "auto"] = _f(
        "pctr", "click probabilities of Eq. 8: a pCTR version (pctr), the user simulator's exact ones (oracle, the paper's "
        "LLM-Auction (Oracle)), or auto: pCTR once a version passed its promotion gate, else the oracle (trainer/reward.py)")
    # -- pairing
    pairing: Literal["all", "worst"] = _f(
        "all", "all: the winner against every loser (the paper); worst: against the lowest-reward loser only, one pair per query "
        "(cheaper DPO; its pairs mostly contrast format errors: docs/irpo.md)")
    # -- DPO (TRL DPOConfig)
    beta: float = _f(0.1, "DPO temperature (paper: 0.1)")
    learning_rate: float = _f(1e-3, "peak learning rate of the LoRA weights (paper, full model: 1e-6)", "--lr")
    lr_scheduler_type: str = _f("cosine", f"learning-rate schedule, one of {', '.join(SCHEDULES)}")
    warmup_ratio: float = _f(0.1, "share of the steps spent warming up the learning rate")
    batch_size: int = _f(2, "pairs per device step; pairs per optimizer step = batch_size x gradient_accumulation_steps (paper: 64); "
                         "memory grows with it (docs/benchmarks.md, The CPU IRPO preset)")
    gradient_accumulation_steps: int = _f(1, "device steps per optimizer step")
    num_epochs: float = _f(1.0, "passes over the pairs", "--dpo-epochs")
    sft_weight: float = _f(
        1.0, "weight of the chosen answers' NLL added to the DPO loss (RPO; TRL loss_type sigmoid+sft); 0: pure DPO, which can "
        "lower the winners' likelihood with the losers' and drift off the answer format (docs/irpo.md)")
    max_length: int | None = _f(None, "longest prompt + answer in tokens; None sizes it from the data; a value below what the data needs is an error, never a silent truncation")
    bf16: bool | None = _f(None, "bfloat16 autocast during DPO (LoRA weights stay fp32); None: on where it is native (a GPU, or a CPU with "
                           "AVX512-BF16 or AMX), float32 elsewhere, where bfloat16 is emulated. Faster where native, but the first loss "
                           "is no longer exactly ln 2 (docs/benchmarks.md, The CPU IRPO preset)")
    precompute_ref_log_probs: bool = _f(True, "compute the reference log-probs once before training instead of at every step")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (TRL's default); off on CPU, where memory is not the "
                                      "limit and with PEFT it forces gradients down to the inputs")
    use_cpu: bool = _f(True, "train on the CPU (TRL use_cpu); --no-use-cpu uses a GPU when there is one")
    threads: int | None = _f(None, "torch CPU threads during DPO (None: leave torch's setting)")
    dpo_seed: int = _f(0, "seed of the trainer (shuffling, the init of a fresh adapter)")
    # -- LoRA (PEFT LoraConfig)
    lora_r: int = _f(8, "LoRA rank of a fresh adapter")
    lora_alpha: int = _f(16, "LoRA scale of a fresh adapter")
    lora_dropout: float = _f(0.0, "LoRA dropout; 0 keeps the first step equal to the reference")
    target_modules: list[str] | None = _f(None, "modules that get an adapter; None lets PEFT choose for the architecture")
    layers_to_transform: list[int] | None = _f(None, "only these decoder layers get adapters (a fresh adapter); None: all")
    lora_top_layers: int | None = _f(None, "shorthand for layers_to_transform: the top N decoder layers (a fresh adapter); layers_to_transform wins when both are set", "--upper-layers")

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"IRPOConfig: {msg}")

        need(self.queries >= 1, f"queries must be >= 1, got {self.queries}")
        need(self.split in ("train", "test"), f"split must be 'train' or 'test', got {self.split!r}")
        need(self.reward in REWARDS, f"reward must be one of {REWARDS}, got {self.reward!r}")
        need(self.query_offset >= 0, f"query_offset must be >= 0, got {self.query_offset}")
        need(1 <= self.bid_low <= self.bid_high, f"bids need 1 <= bid_low <= bid_high, got {self.bid_low}..{self.bid_high}")
        need(self.candidates_k is None or self.candidates_k >= 1, f"candidates_k must be >= 1 or None, got {self.candidates_k}")
        need(self.samples_per_query >= 2, f"samples_per_query must be >= 2 (a pair needs two answers), got {self.samples_per_query}")
        need(self.temperature > 0, f"temperature must be > 0 (greedy decoding gives M identical answers, no pairs), got {self.temperature}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        need(self.top_k >= 0, f"top_k must be >= 0 (0: off), got {self.top_k}")
        need(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        need(self.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {self.backend!r}")
        need(self.sample_batch_size >= 1, f"sample_batch_size must be >= 1, got {self.sample_batch_size}")
        need(self.delta_th >= 0, f"delta_th must be >= 0, got {self.delta_th}")
        need(self.lam >= 0, f"lam (lambda) must be >= 0, got {self.lam}")
        need(self.pairing in PAIRINGS, f"pairing must be one of {PAIRINGS} ('all': every loser, the paper; 'worst': one pair per query), got {self.pairing!r}")
        need(self.beta > 0, f"beta must be > 0, got {self.beta}")
        need(0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate}")
        need(self.lr_scheduler_type in SCHEDULES, f"lr_scheduler_type must be one of {SCHEDULES}, got {self.lr_scheduler_type!r}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.gradient_accumulation_steps >= 1, f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        need(self.num_epochs > 0, f"num_epochs must be > 0, got {self.num_epochs}")
        need(self.sft_weight >= 0, f"sft_weight must be >= 0 (0: pure DPO), got {self.sft_weight}")
        need(self.max_length is None or self.max_length >= 2, f"max_length must be >= 2 or None (sized from the data), got {self.max_length}")
        need(self.threads is None or self.threads >= 1, f"threads must be >= 1 or None, got {self.threads}")
        need(self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}")
        need(self.lora_alpha >= 1, f"lora_alpha must be >= 1, got {self.lora_alpha}")
        need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.target_modules is not None:
            need(len(self.target_modules) > 0 and all(isinstance(m, str) and m for m in self.target_modules), f"target_modules must be non-empty names or None, got {self.target_modules!r}")
            need("lm_head" not in self.target_modules, "target_modules may not hold 'lm_head' (TRL computes log-probs from lm_head.weight directly; an adapter there is never trained)")
        need(self.lora_top_layers is None or self.lora_top_layers >= 1, f"lora_top_layers must be >= 1 or None, got {self.lora_top_layers}")
        if self.layers_to_transform is not None:
            need(len(self.layers_to_transform) > 0 and all(isinstance(i, int) and i >= 0 for i in self.layers_to_transform), f"layers_to_transform must be non-negative layer indices or None, got {self.layers_to_transform!r}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, **overrides: Any) -> "IRPOConfig":
        """The paper's appendix B.2 values (GPU): lr 1e-6 cosine, warmup 0.1, batch 64, bf16, all losers."""
        base = dict(
            queries=12000, candidates_k=None, samples_per_query=5, max_new_tokens=512, pairing="all",
            learning_rate=1e-6, lr_scheduler_type="cosine", warmup_ratio=0.1, batch_size=8, gradient_accumulation_steps=8,
            bf16=True, use_cpu=False, gradient_checkpointing=True, backend="vllm", sample_batch_size=64, lora_r=16, lora_alpha=32,
            sft_weight=0.0,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def cpu(cls, **overrides: Any) -> "IRPOConfig":
        """Small-model defaults for 2 CPU cores (the class defaults): every loser ("all"), DPO plus the
        chosen answers' NLL (weight 1), LoRA lr 1e-3 on every layer, 2 pairs per step, bf16 autocast where native,
        no gradient checkpointing, reference log-probs precomputed. Why each: docs/benchmarks.md
        ("The CPU IRPO preset") and docs/irpo.md."""
        return cls(**overrides)

    def replace(self, **changes: Any) -> "IRPOConfig":
        return replace(self, **changes)

    @property
    def use_bf16(self) -> bool:
        """``bf16`` resolved: None means native bfloat16 only (a GPU, or a CPU that has it)."""
        if self.bf16 is not None:
            return self.bf16
        from llm_auction.models.device import cpu_supports_bf16

        return not self.use_cpu or cpu_supports_bf16()

    @property
    def pairs_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what the manifest records as the epoch's config)."""
        return asdict(self)
