"""``IRPOConfig``: every setting of one IRPO epoch, in one dataclass (the style of TRL's ``DPOConfig``).

Parameters, grouped by concern:

    > Data: the offline set of this epoch

    queries (`int`, defaults to `32`):
        Queries in the offline set, taken from the world's ``split`` in file order starting at
        ``query_offset``.
    split (`str`, defaults to `"train"`):
        World split the offline set comes from (``"train"``; the held-out ``"test"`` split is for evaluation).
    query_offset (`int`, defaults to `0`):
        Index of the first query of the split to use; successive epochs may move it to see new queries.
    bid_seed (`int`, defaults to `0`):
        Seed of this epoch's bids. Bids are redrawn for every query, uniform integers
        ``bid_low..bid_high`` (paper: 1..100), so the policy must read bids, not memorize them.
        The trainer derives the effective seed from it and the epoch's parent version.
    bid_low / bid_high (`int`, default `1` / `100`):
        Range of the redrawn bids, inclusive.
    candidates_k (`int` or `None`, defaults to `8`):
        Candidates listed in the prompt: the top ``k`` by relevance, through the responder's own
        picker (``models.retrieval.candidate_picker``); ``None`` lists all of them.

    > Sampling: answers from the policy the epoch starts from

    samples_per_query (`int`, defaults to `5`):
        M, answers sampled per query (paper: 5 for the offline set).
    temperature, top_p, top_k, max_new_tokens (defaults `0.7`, `0.8`, `20`, `96`):
        The sampling settings passed to the serving backend (``models.adllm.SamplingConfig``).
    sample_seed (`int`, defaults to `0`):
        Seed of the sampler.
    backend (`str`, defaults to `"transformers"`):
        Serving backend that samples (``"transformers"`` or ``"vllm"``), through ``make_backend``.
    sample_batch_size (`int`, defaults to `8`):
        Prompts per generation batch.

    > Reward: Eq. 8

    delta_th (`float`, defaults to `10.0`):
        A sample is a loser when the winner's reward exceeds its own by more than this.
    lam (`float`, defaults to `1.0`):
        lambda, the weight of the user-experience penalty in Eq. 8.
    oracle (`bool`, defaults to `False`):
        Score with the user simulator's exact click probabilities instead of the pCTR model
        (the paper's "LLM-Auction (Oracle)").

    > Pairing

    pairing (`str`, defaults to `"all"`):
        ``"all"``: every loser against the winner (the paper); ``"worst"``: one pair per query,
        the winner against the lowest-reward loser (fewer pairs, cheaper DPO; on SmolLM2 its pairs
        mostly contrasted format errors and the policy learned to insert fewer ads: docs/irpo.md).

    > DPO (TRL ``DPOConfig``)

    beta (`float`, defaults to `0.1`):
        DPO temperature (paper: 0.1).
    learning_rate (`float`, defaults to `1e-3`):
        Peak learning rate of the LoRA weights (paper, full model: 1e-6).
    lr_scheduler_type (`str`, defaults to `"cosine"`), warmup_ratio (`float`, defaults to `0.1`):
        Schedule of the learning rate.
    batch_size (`int`, defaults to `2`), gradient_accumulation_steps (`int`, defaults to `1`):
        Pairs per optimizer step = ``batch_size * gradient_accumulation_steps`` (paper: 64). On CPU
        2 pairs of ~1,150-token rows hold ~7 GB RSS during DPO, 4 pairs ~12 GB.
    num_epochs (`float`, defaults to `1.0`):
        Passes over the pairs.
    sft_weight (`float`, defaults to `1.0`):
        Weight of a negative log-likelihood term on the chosen answer added to the DPO loss (RPO,
        Pang et al. 2024; TRL ``loss_type=["sigmoid", "sft"]``). Pure DPO (0, the paper's preset) can lower the
        chosen answer's likelihood along with the rejected one's and drift off the answers' format;
        the NLL term keeps the winners (never a format error unless all samples are) likely. With
        a weight w the first step's loss is ln 2 + w x (the chosen answers' mean token NLL).
    max_length (`int` or `None`, defaults to `None`):
        Longest prompt + completion in tokens. ``None`` sizes it from the data (the longest pair);
        a value below what the data needs is an error, never a silent truncation.
    bf16 (`bool`, defaults to `True`):
        bfloat16 autocast for DPO (the LoRA weights stay fp32). Measured on SmolLM2 with K=8 prompts,
        2 cores (bench/irpo.py): 6.2 s per pair against 11.9 in fp32. Costs exactness: the first
        step's loss was 0.6971, not ln 2 (policy and reference forwards round differently).
    precompute_ref_log_probs (`bool`, defaults to `True`):
        Compute the reference log-probs once before training. Measured: 6.7 s per pair, 22.5 without.
    gradient_checkpointing (`bool`, defaults to `False`):
        Recompute activations in the backward pass (TRL's default is ``True``). Off on CPU: memory is
        not the limit for a small model, and with PEFT it also forces gradients down to the inputs
        (``enable_input_require_grads``), so adapters on upper layers alone would save no backward.
        Measured (fp32): 37.3 s per pair with it, 11.9 without.
    use_cpu (`bool`, defaults to `True`):
        Train on CPU (TRL: ``use_cpu=True``); ``False`` uses the GPU when there is one.
    threads (`int` or `None`, defaults to `None`):
        torch CPU threads during DPO (``None``: leave torch's setting).
    dpo_seed (`int`, defaults to `0`):
        Seed of the trainer (shuffling, init of a fresh adapter).

    > LoRA (PEFT ``LoraConfig``)

    lora_r (`int`, defaults to `8`), lora_alpha (`int`, defaults to `16`), lora_dropout (`float`, defaults to `0.0`):
        Rank, scale and dropout of the adapter. Dropout stays 0 so the first step equals the reference.
    target_modules (`list[str]` or `None`, defaults to `None`):
        Modules that get an adapter; ``None`` lets PEFT choose for the architecture
        (attention projections: ``c_attn``/``c_proj`` for GPT-2, ``q_proj``/``v_proj`` for Llama).
    layers_to_transform (`list[int]` or `None`, defaults to `None`):
        Only these decoder layers get adapters (e.g. the upper half: no backward below them);
        ``None``: all layers. Only used when the epoch starts a fresh adapter.
    lora_top_layers (`int` or `None`, defaults to `None`):
        Shorthand for ``layers_to_transform``: the top N decoder layers, counted from the model's
        depth when DPO opens it. ``layers_to_transform``, when set, takes precedence. Measured
        on SmolLM2 (the upper 15 of 30, bf16): 6.7 s per pair against 6.2 with all layers, no gain.

Presets: :meth:`IRPOConfig.paper` (the paper's appendix B.2 values, for a GPU) and
:meth:`IRPOConfig.cpu` (the defaults above, measured on 2 CPU cores; see docs/irpo.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

PAIRINGS = ("all", "worst")
BACKENDS = ("transformers", "vllm")
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")


@dataclass
class IRPOConfig:
    """Settings of one IRPO epoch; see the module docstring for every parameter."""

    # data
    queries: int = 32
    split: str = "train"
    query_offset: int = 0
    bid_seed: int = 0
    bid_low: int = 1
    bid_high: int = 100
    candidates_k: int | None = 8
    # sampling
    samples_per_query: int = 5
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_new_tokens: int = 96
    sample_seed: int = 0
    backend: Literal["transformers", "vllm"] = "transformers"
    sample_batch_size: int = 8
    # reward
    delta_th: float = 10.0
    lam: float = 1.0
    oracle: bool = False
    # pairing
    pairing: Literal["all", "worst"] = "all"
    # DPO
    beta: float = 0.1
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    batch_size: int = 2
    gradient_accumulation_steps: int = 1
    num_epochs: float = 1.0
    sft_weight: float = 1.0
    max_length: int | None = None
    bf16: bool = True
    precompute_ref_log_probs: bool = True
    gradient_checkpointing: bool = False
    use_cpu: bool = True
    threads: int | None = None
    dpo_seed: int = 0
    # LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    layers_to_transform: list[int] | None = field(default=None)
    lora_top_layers: int | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"IRPOConfig: {msg}")

        need(self.queries >= 1, f"queries must be >= 1, got {self.queries}")
        need(self.split in ("train", "test"), f"split must be 'train' or 'test', got {self.split!r}")
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
        """Small-model defaults measured on 2 CPU cores (the class defaults): every loser ("all"), DPO plus
        the chosen answers' NLL (weight 1), LoRA lr 1e-3 on every layer, 2 pairs per step, bf16 autocast,
        no gradient checkpointing, reference log-probs precomputed (figures in the field docs above and
        in docs/irpo.md: on SmolLM2 these raised held-out reward and revenue together)."""
        return cls(**overrides)

    def replace(self, **changes: Any) -> "IRPOConfig":
        return replace(self, **changes)

    @property
    def pairs_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what the manifest records as the epoch's config)."""
        return asdict(self)
