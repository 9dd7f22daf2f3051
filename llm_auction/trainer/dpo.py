"""IRPO's training stage: DPO with TRL on a LoRA adapter, and the data it trains on.

- :func:`dpo_rows`    (prompt, chosen, rejected) rows in TRL's text format, the prompt rendered as
                      the serving backend rendered it for sampling, cut where the model's context
                      demands it, never the answers;
- :func:`train_dpo`   TRL ``DPOTrainer`` on a LoRA adapter whose reference is the starting policy;
- :func:`merge_adapter` an adapter merged into the base weights, for engines that serve a full
                      model faster than an adapter.

The reference is exactly the policy the epoch starts from. First epoch: the base model and a
fresh ``peft_config`` (TRL's reference is the base with adapters disabled, equal to the policy
while LoRA's B is zero). Later epochs: adapter t-1 loaded as a trainable ``PeftModel`` and
passed without ``ref_model``; TRL (with peft >= 0.20) then copies it into a frozen ``ref``
adapter. Either way the first DPO step sees policy == reference: its loss is ln 2 (plus the
chosen answers' NLL term when ``sft_weight`` > 0).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from llm_auction.schemas import QueryEvent

from .irpo_config import IRPOConfig

def prompt_budget(tokenizer, model_config, max_new_tokens: int) -> int | None:
    """Prompt tokens the serving backend keeps (its left truncation): the context minus the answer."""
    from llm_auction.models.hf_backend import max_positions

    ctx = max_positions(model_config)
    declared = getattr(tokenizer, "model_max_length", None)
    declared = declared if isinstance(declared, int) and 0 < declared < 10**7 else None
    if ctx is None:
        return declared
    return min(ctx - max_new_tokens, declared) if declared is not None else ctx - max_new_tokens


def dpo_rows(tokenizer, model_config, queries: dict[str, QueryEvent], pairs: pd.DataFrame, demonstration: bool, max_new_tokens: int) -> tuple[list[dict], int]:
    """TRL's text format (prompt, chosen, rejected) and the max_length the data needs (prompt + answer + EOS).

    The prompt is the one the backend rendered for sampling (``prompt_messages`` over the shown
    candidates, the model's chat template). A model whose context cannot hold the whole prompt
    (the tiny GPT-2) reads its right end, as the backend does when sampling; it is cut here to
    leave room for the longest answer of the pair.
    """
    from llm_auction.models.adllm import prompt_messages
    from llm_auction.models.hf_backend import max_positions
    from llm_auction.models.prompt import render_prompt

    ctx = max_positions(model_config)
    budget = prompt_budget(tokenizer, model_config, max_new_tokens)
    eos = tokenizer.eos_token or ""
    rows, need = [], 0
    for p in pairs.itertuples(index=False):
        prompt = render_prompt(tokenizer, prompt_messages(queries[p.query_id], demonstration))
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        comp = max(len(tokenizer(t + eos, add_special_tokens=False)["input_ids"]) for t in (p.chosen_text, p.rejected_text))
        keep = len(ids)
        if budget is not None:
            keep = min(keep, budget)
        if ctx is not None:
            keep = min(keep, ctx - comp - 2)  # 2: a token boundary may move when the cut prompt is re-tokenized
        if keep < 1:
            raise ValueError(f"query {p.query_id}: an answer of {comp} tokens leaves no room for the prompt in the model's {ctx}-token context")
        if keep < len(ids):
            prompt = tokenizer.decode(ids[-keep:])
        rows.append({"prompt": prompt, "chosen": p.chosen_text, "rejected": p.rejected_text})
        need = max(need, keep + comp + 2)
    return rows, need


@dataclass
class DPOResult:
    """What the DPO stage produced: the adapter folder and its metrics."""

    adapter_dir: Path
    metrics: dict[str, float]
    log_history: list[dict] = field(default_factory=list)


def _dpo_metrics(history: list[dict]) -> dict[str, float]:
    steps = [h for h in history if "loss" in h and "train_runtime" not in h]
    if not steps:
        return {}

    def mean(key: str) -> float:
        v = [h[key] for h in steps if key in h]
        return float(np.mean(v)) if v else float("nan")

    out = {
        "dpo_steps": float(len(steps)),
        "dpo_first_loss": float(steps[0]["loss"]),
        "dpo_last_loss": float(steps[-1]["loss"]),
        "dpo_mean_loss": mean("loss"),
        "dpo_reward_accuracy": mean("rewards/accuracies"),
        "dpo_reward_margin": mean("rewards/margins"),
        "dpo_last_reward_accuracy": float(steps[-1].get("rewards/accuracies", float("nan"))),
    }
    if any("logps/chosen" in h for h in steps):
        out["dpo_logp_chosen"] = mean("logps/chosen")
        out["dpo_logp_rejected"] = mean("logps/rejected")
        out["dpo_logp_margin"] = out["dpo_logp_chosen"] - out["dpo_logp_rejected"]
    return out


def train_dpo(base_model: Path, parent_adapter: Path | None, rows_fn: Callable, cfg: IRPOConfig, out_dir: Path, work_dir: Path) -> DPOResult:
    """DPO on a LoRA adapter with TRL; saves the trained ``default`` adapter (safetensors) to ``out_dir``.

    ``rows_fn(tokenizer, model_config) -> (rows, needed_max_length)`` builds the dataset once the
    tokenizer is open. The reference is the starting policy (module docstring); no completion is
    truncated: ``max_length`` is sized from the data and checked against TRL's tokenized rows.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base_model), local_files_only=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32, local_files_only=True)
        rows, need = rows_fn(tokenizer, model.config)
        if cfg.max_length is not None and cfg.max_length < need:
            raise ValueError(f"max_length={cfg.max_length} would truncate answers: the pairs need {need} tokens (leave it unset to size it from the data)")
        max_length = cfg.max_length or need
        peft_config = None
        if parent_adapter is None:
            layers = cfg.layers_to_transform
            if layers is None and cfg.lora_top_layers is not None:
                depth = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer")
                layers = list(range(max(0, depth - cfg.lora_top_layers), depth))
            peft_config = LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
                layers_to_transform=layers, bias="none", task_type="CAUSAL_LM",
            )
        else:
            # Trainable copy of adapter t-1; TRL copies it into a frozen "ref" adapter (the reference).
            model = PeftModel.from_pretrained(model, str(parent_adapter), is_trainable=True)
        args = DPOConfig(
            output_dir=str(work_dir / "dpo"),
            beta=cfg.beta,
            # RPO: DPO plus the chosen answers' NLL, weighted (IRPOConfig.sft_weight)
            loss_type=["sigmoid", "sft"] if cfg.sft_weight > 0 else ["sigmoid"],
            loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight > 0 else None,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler_type,
            warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the steps
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            num_train_epochs=cfg.num_epochs,
            max_length=max_length,
            precompute_ref_log_probs=cfg.precompute_ref_log_probs,
            gradient_checkpointing=cfg.gradient_checkpointing,
            bf16=cfg.use_bf16,
            use_cpu=cfg.use_cpu,
            seed=cfg.dpo_seed,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=False,
            dataloader_num_workers=0,
        )
        dataset = Dataset.from_list(rows)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
        _check_not_truncated(trainer.train_dataset, len(rows), max_length)
        if parent_adapter is not None and "ref" not in trainer.model.peft_config:
            raise RuntimeError("TRL did not add a frozen 'ref' adapter: the reference would not be the parent policy")
        trainer.train()
        out_dir.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(str(out_dir), selected_adapters=["default"], safe_serialization=True)
        history = list(trainer.state.log_history)
    finally:
        torch.set_num_threads(threads)
    _flatten_default_adapter(out_dir)
    return DPOResult(out_dir, _dpo_metrics(history) | {"dpo_max_length": float(max_length), "dpo_bf16": float(cfg.use_bf16)}, history)


def _check_not_truncated(dataset, n_rows: int, max_length: int) -> None:
    """TRL drops rows whose prompt fills max_length and cuts the rest silently: neither may happen."""
    if len(dataset) != n_rows:
        raise RuntimeError(f"TRL dropped {n_rows - len(dataset)} of {n_rows} pairs (prompt >= max_length={max_length})")
    longest = max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in dataset)
    if longest > max_length:
        raise RuntimeError(f"a pair of {longest} tokens would be truncated to max_length={max_length}")


def _flatten_default_adapter(out_dir: Path) -> None:
    """PEFT writes a non-default adapter under a subfolder; keep the loadable layout (files at the top)."""
    sub = out_dir / "default"
    if sub.is_dir() and not (out_dir / "adapter_config.json").exists():
        for p in sub.iterdir():
            shutil.move(str(p), out_dir / p.name)
        sub.rmdir()
    for stray in ("README.md",):
        (out_dir / stray).unlink(missing_ok=True)


def merge_adapter(base_model: Path, adapter: Path, out: Path) -> Path:
    """``adapter`` merged into the base weights, saved as a full model folder (safetensors, tokenizer).

    For sampling on a CPU vLLM engine, which serves a LoRA version much slower than the base (no
    Triton: the LoRA kernels run in plain torch; docs/benchmarks.md), while a merged version runs at
    the base's speed after one engine restart. The registry keeps the adapter; the merged folder is
    a scratch copy.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32, local_files_only=True)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(base_model), local_files_only=True).save_pretrained(str(out))
    for extra in ("generation_config.json", "chat_template.jinja"):
        if (Path(base_model) / extra).exists() and not (out / extra).exists():
            shutil.copyfile(Path(base_model) / extra, out / extra)
    return out
