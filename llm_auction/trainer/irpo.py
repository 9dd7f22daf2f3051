"""One IRPO epoch (paper Algorithm 1, the learning leg): sample, score, pair, DPO, publish.

Read top to bottom; each stage is one function with one job:

1. :func:`build_offline_set`  world queries of one split, with bids redrawn for this epoch;
2. :func:`narrow`             the responder's candidate narrowing (``models.retrieval.candidate_picker``);
3. :func:`sample_answers`     M answers per query from the policy the epoch starts from, through
                              the serving backend (the ``AdLLM`` protocol: transformers or vLLM);
4. :func:`score_samples`      Eq. 8 for every answer, pCTR by the ONNX scorer in one batch (or
                              the user simulator's exact click probabilities with ``oracle``);
5. :func:`make_pairs`         winner = argmax reward, losers = r_w - r_l > delta_th;
6. :func:`train_dpo`          TRL ``DPOTrainer`` on a LoRA adapter, reference = the starting policy;
7. :func:`run_epoch`          the above, then the audit files and the registry (atomic), and
                              :func:`announce` on ``auction.policy-versions`` once.

The reference is exactly the policy the epoch starts from. First epoch: the base model and a
fresh ``peft_config`` (TRL's reference is the base with adapters disabled, equal to the policy
while LoRA's B is zero). Later epochs: adapter t-1 loaded as a trainable ``PeftModel`` and
passed without ``ref_model``; TRL 1.16 (peft >= 0.20) then copies it into a frozen ``ref``
adapter. Either way the first DPO step sees policy == reference: its loss is ln 2.

Everything the epoch writes goes to a private work folder; only :meth:`ModelRegistry.publish`
(copy to a hidden folder, rename) makes a version visible, so an exception or a kill before it
leaves the registry as it was.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from llm_auction.auction import allocate, reward
from llm_auction.logs import log_event
from llm_auction.schemas import Candidates, QueryEvent

from .irpo_config import IRPOConfig
from .registry import Manifest, ModelRegistry

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
SAMPLES_FILE = "irpo_samples.parquet"
PAIRS_FILE = "irpo_pairs.parquet"
BASE_VERSION = "base"


# --------------------------------------------------------------------------- 1. the offline set
def epoch_bid_seed(cfg: IRPOConfig, parent: str | None) -> int:
    """The seed of this epoch's bids: the config's, mixed with the parent version, so each epoch redraws."""
    h = hashlib.sha256(f"irpo-bids:{cfg.bid_seed}:{parent or BASE_VERSION}".encode()).digest()
    return int.from_bytes(h[:8], "little")


def build_offline_set(world, cfg: IRPOConfig, seed: int) -> list[QueryEvent]:
    """``cfg.queries`` queries of ``cfg.split`` (from ``cfg.query_offset``), each with fresh uniform bids."""
    records = list(world.records(cfg.split))[cfg.query_offset : cfg.query_offset + cfg.queries]
    if len(records) < cfg.queries:
        raise ValueError(f"the world's {cfg.split} split has {len(records)} queries from offset {cfg.query_offset}, {cfg.queries} asked")
    rng = random.Random(seed)
    n_ads = len(world.ads)
    return [world.event(r, [rng.randint(cfg.bid_low, cfg.bid_high) for _ in range(n_ads)]) for r in records]


# --------------------------------------------------------------------------- 2. candidate narrowing
def narrow(queries: Sequence[QueryEvent], pick: Callable[[QueryEvent], Sequence] | None) -> list[QueryEvent]:
    """Each query with only the candidates the responder would show (``pick``: ``retrieval.candidate_picker``)."""
    if pick is None:
        return list(queries)
    return [q.model_copy(update={"candidates": Candidates.of(pick(q))}) for q in tqdm(queries, desc="irpo: candidates", unit="query", disable=None)]


# --------------------------------------------------------------------------- 3. sampling
def sample_answers(backend, queries: Sequence[QueryEvent], policy_version: str, m: int, batch_size: int = 8) -> list[list[str]]:
    """``m`` answers per query from ``policy_version``, through the ``AdLLM`` protocol only."""
    out: list[list[str]] = []
    for i in tqdm(range(0, len(queries), batch_size), desc="irpo: sample", unit="batch", disable=None):
        got = backend.generate(list(queries[i : i + batch_size]), policy_version, n=m)
        if len(got) != len(queries[i : i + batch_size]) or any(len(a) != m for a in got):
            raise RuntimeError(f"backend returned {[len(a) for a in got]} answers for {len(queries[i:i + batch_size])} queries x {m}")
        out.extend(got)
    return out


# --------------------------------------------------------------------------- 4. scoring (Eq. 8)
PctrFn = Callable[[Sequence[tuple[QueryEvent, str, Sequence[str]]]], list[dict[str, float]]]


def onnx_pctr(scorer) -> PctrFn:
    """pCTR of every exposed ad of many answers, with one encoder call and one onnxruntime run."""

    def score(items: Sequence[tuple[QueryEvent, str, Sequence[str]]]) -> list[dict[str, float]]:
        rows = [(q, text, ad) for q, text, ads in items for ad in ads]
        if not rows:
            return [{} for _ in items]
        texts = list(dict.fromkeys([t for q, text, _ in rows for t in (q.query, text)]))
        vecs = scorer.encoder.encode(texts)
        at = {t: i for i, t in enumerate(texts)}
        p = scorer.score_rows(
            vecs[[at[q.query] for q, _, _ in rows]], vecs[[at[text] for _, text, _ in rows]],
            [q.user.user_id for q, _, _ in rows], [ad for _, _, ad in rows],
        )
        out, k = [], 0
        for _, _, ads in items:
            out.append({ad: float(p[k + j]) for j, ad in enumerate(ads)})
            k += len(ads)
        return out

    return score


def oracle_pctr(simulator) -> PctrFn:
    """The user simulator's exact click probabilities (the paper's LLM-Auction (Oracle) reward)."""

    def score(items: Sequence[tuple[QueryEvent, str, Sequence[str]]]) -> list[dict[str, float]]:
        return simulator.answer_probabilities([(q, text) for q, text, _ in items])

    return score


def score_samples(queries: Sequence[QueryEvent], answers: Sequence[Sequence[str]], pctr: PctrFn, lam: float = 1.0) -> pd.DataFrame:
    """One row per sampled answer: its allocation (against the shown candidates), pCTRs and Eq. 8 reward."""
    items, meta = [], []
    for q, texts in zip(queries, answers):
        for j, text in enumerate(texts):
            alloc = allocate(text, q.candidates)
            items.append((q, text, alloc.exposed))
            meta.append((q, j, text, alloc))
    pctrs = pctr(items) if items else []
    rows = []
    for (q, j, text, alloc), p in zip(meta, pctrs):
        p = {ad: p[ad] for ad in alloc.exposed}
        bids = q.bids()
        rows.append({
            "query_id": q.query_id,
            "sample": j,
            "text": text,
            "reward": float(reward(alloc, bids, p, lam)),
            "n_ads": alloc.n_ads,
            "format_error": alloc.format_error,
            "pctr": json.dumps(p, sort_keys=True),
            "bids": json.dumps({ad: bids[ad] for ad in q.candidates.ad_ids}, sort_keys=True),
        })
    return pd.DataFrame(rows, columns=["query_id", "sample", "text", "reward", "n_ads", "format_error", "pctr", "bids"])


# --------------------------------------------------------------------------- 5. pairing
def make_pairs(rewards: Sequence[float], delta_th: float, pairing: str = "all") -> list[tuple[int, int]]:
    """(winner, loser) sample indices of one query: winner = argmax (first on ties), losers = r_w - r_l > delta_th.

    ``pairing="all"`` pairs the winner with every loser (the paper); ``"worst"`` with the
    lowest-reward loser only (first on ties). No loser: no pair.
    """
    if not len(rewards):
        return []
    w = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
    losers = [j for j, r in enumerate(rewards) if rewards[w] - r > delta_th]
    if pairing == "worst" and losers:
        losers = [min(losers, key=lambda j: (rewards[j], j))]
    elif pairing not in ("all", "worst"):
        raise ValueError(f"pairing must be 'all' or 'worst', got {pairing!r}")
    return [(w, j) for j in losers]


def pair_table(samples: pd.DataFrame, delta_th: float, pairing: str) -> tuple[pd.DataFrame, int]:
    """All pairs of an epoch (``irpo_pairs.parquet``'s rows) and the number of queries without a loser."""
    rows, skipped = [], 0
    for qid, g in samples.groupby("query_id", sort=False):
        g = g.sort_values("sample")
        r, t = g["reward"].tolist(), g["text"].tolist()
        pairs = make_pairs(r, delta_th, pairing)
        skipped += not pairs
        rows += [{"query_id": qid, "chosen_text": t[w], "rejected_text": t[j], "chosen_reward": r[w], "rejected_reward": r[j]} for w, j in pairs]
    return pd.DataFrame(rows, columns=["query_id", "chosen_text", "rejected_text", "chosen_reward", "rejected_reward"]), skipped


# --------------------------------------------------------------------------- 6. DPO
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
            bf16=cfg.bf16,
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
    return DPOResult(out_dir, _dpo_metrics(history) | {"dpo_max_length": float(max_length)}, history)


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

    For sampling on a CPU vLLM engine: it served a LoRA version ~6x slower than the base (no Triton,
    the LoRA kernels run in plain torch), while a merged version runs at the base's speed after one
    engine restart. The registry keeps the adapter; the merged folder is a scratch copy.
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


# --------------------------------------------------------------------------- 7. the epoch
@dataclass
class EpochResult:
    manifest: Manifest | None  # None when no pair formed (nothing to learn, nothing published)
    metrics: dict[str, Any]
    samples: pd.DataFrame
    pairs: pd.DataFrame
    stage_s: dict[str, float]
    announced: bool = False


def reward_stats(samples: pd.DataFrame) -> dict[str, float]:
    r = samples["reward"].to_numpy(dtype=float)
    return {
        "mean_reward": float(r.mean()) if r.size else float("nan"),
        "format_error_rate": float(samples["format_error"].mean()) if r.size else float("nan"),
        "mean_ads": float(samples["n_ads"].mean()) if r.size else float("nan"),
    }


def run_epoch(
    cfg: IRPOConfig,
    *,
    world,
    backend,
    base_model: Path,
    registry: ModelRegistry,
    pctr: PctrFn,
    pctr_version: str | None,
    parent: str | None = None,
    pick: Callable | None = None,
    announcer: Callable[[Manifest], bool] | None = None,
    data_window_extra: dict[str, Any] | None = None,
    close_backend: bool = False,
) -> EpochResult:
    """One epoch from policy ``parent`` (None: the base model) to a published policy version.

    ``backend`` serves ``parent`` (it must have loaded it) and the base under ``"base"``;
    ``pctr`` scores exposed ads (:func:`onnx_pctr` or :func:`oracle_pctr`); ``announcer``, when
    given, announces the published version (see :func:`announce`). ``close_backend`` closes the
    backend once the answers are sampled, so a serving engine's processes (vLLM) do not compete
    with DPO for the cores.
    """
    stage_s: dict[str, float] = {}
    parent_manifest = registry.get(parent) if parent else None
    policy_version = parent or backend.config.base_version

    t = time.perf_counter()
    seed = epoch_bid_seed(cfg, parent)
    queries = narrow(build_offline_set(world, cfg, seed), pick)
    stage_s["offline_set"] = time.perf_counter() - t

    t = time.perf_counter()
    answers = sample_answers(backend, queries, policy_version, cfg.samples_per_query, cfg.sample_batch_size)
    stage_s["sample"] = time.perf_counter() - t
    if close_backend:
        backend.close()

    t = time.perf_counter()
    samples = score_samples(queries, answers, pctr, cfg.lam)
    stage_s["score"] = time.perf_counter() - t

    pairs, skipped = pair_table(samples, cfg.delta_th, cfg.pairing)
    metrics: dict[str, Any] = {
        "queries": len(queries), "samples": len(samples), "pairs": len(pairs), "skipped_queries": skipped,
        **reward_stats(samples),
        "reward_margin": float((pairs["chosen_reward"] - pairs["rejected_reward"]).mean()) if len(pairs) else float("nan"),
    }
    log_event(log, "irpo: pairs", parent=policy_version, **metrics)
    window = {
        "split": cfg.split, "query_offset": cfg.query_offset, "queries": len(queries),
        "first_query_id": queries[0].query_id, "last_query_id": queries[-1].query_id,
        "bid_seed": seed, "oracle": cfg.oracle, **(data_window_extra or {}),
    }
    if pairs.empty:
        log_event(log, "irpo: no pair formed, nothing to learn; nothing published", level=logging.WARNING, parent=policy_version)
        return EpochResult(None, metrics, samples, pairs, stage_s)

    registry.root.mkdir(parents=True, exist_ok=True)
    remove_stale_work(registry.root)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=registry.root))
    lock = _hold_work_lock(work)
    try:
        t = time.perf_counter()
        by_id = {q.query_id: q for q in queries}
        demonstration = bool(getattr(backend.config, "demonstration", True))
        dpo = train_dpo(
            Path(base_model), parent_manifest.path if parent_manifest else None,
            lambda tok, mc: dpo_rows(tok, mc, by_id, pairs, demonstration, cfg.max_new_tokens),
            cfg, work / "version", work,
        )
        stage_s["dpo"] = time.perf_counter() - t
        metrics |= dpo.metrics
        metrics["dpo_s_per_pair"] = stage_s["dpo"] / len(pairs)
        log_event(log, "irpo: dpo done", **{k: round(v, 4) for k, v in dpo.metrics.items()}, seconds=round(stage_s["dpo"], 1))

        t = time.perf_counter()
        samples.to_parquet(dpo.adapter_dir / SAMPLES_FILE, index=False)
        pairs.to_parquet(dpo.adapter_dir / PAIRS_FILE, index=False)
        manifest = registry.publish(
            dpo.adapter_dir,
            metrics=metrics,
            parent=parent,
            data_window=window,
            main="adapter_model.safetensors",
            n_train=len(pairs),
            extra={
                "policy_kind": "lora",
                "base_model": str(Path(base_model).resolve()),
                "pctr_version": pctr_version,
                "config": cfg.to_dict(),
                "stage_s": {k: round(v, 3) for k, v in stage_s.items()},
            },
        )
        stage_s["publish"] = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
        lock.close()
    announced = bool(announcer(manifest)) if announcer else False
    log_event(log, "irpo: epoch done", version=manifest.version, parent=parent, announced=announced, **{f"{k}_s": round(v, 2) for k, v in stage_s.items()})
    return EpochResult(manifest, metrics, samples, pairs, stage_s, announced)


# --------------------------------------------------------------------------- work folders
WORK_PREFIX = ".irpo-work-"
WORK_LOCK = ".owner.lock"
STALE_UNLOCKED_S = 600.0  # a work folder without its lock file is only this old while mkdtemp -> flock runs


def _hold_work_lock(work: Path):
    """Lock ``work`` for as long as this epoch runs; the kernel drops the lock when the process dies."""
    f = (work / WORK_LOCK).open("a")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def remove_stale_work(root: Path) -> list[Path]:
    """Delete the ``.irpo-work-*`` folders of epochs that died (killed during DPO): their lock is free.

    A live epoch holds an exclusive ``flock`` on its folder's lock file, so its folder is never
    taken; a folder without a lock file is removed only when it is older than ``STALE_UNLOCKED_S``.
    Returns the folders removed. Work folders are never versions (the registry lists ``<kind>/<kind>-NNNN``).
    """
    removed = []
    for work in sorted(Path(root).glob(f"{WORK_PREFIX}*")):
        if not work.is_dir():
            continue
        lock_path = work / WORK_LOCK
        try:
            if lock_path.exists():
                with lock_path.open("a") as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a running epoch owns it
            elif time.time() - work.stat().st_mtime < STALE_UNLOCKED_S:
                continue
        except FileNotFoundError:
            continue  # its epoch finished meanwhile
        shutil.rmtree(work, ignore_errors=True)
        removed.append(work)
        log_event(log, "irpo: removed the work folder of a dead epoch", path=str(work))
    return removed


# --------------------------------------------------------------------------- announcement
def announce(registry: ModelRegistry, manifest: Manifest, producer, topic: str, timeout_s: float = 30.0) -> bool:
    """Send ``manifest``'s ``PolicyVersion`` once: skipped when the registry records it as announced.

    The event id is deterministic (:meth:`Manifest.event_id`), so a crash between the broker's
    ack and the record re-sends an event consumers already dedup. Returns whether it was sent now.
    """
    from llm_auction.schemas import encode

    if registry.is_announced(manifest.version):
        log_event(log, "irpo: already announced", version=manifest.version)
        return False
    event = manifest.to_event()
    producer.send(topic, key=manifest.version.encode(), value=encode(event)).get(timeout=timeout_s)
    producer.flush(timeout=timeout_s)
    registry.mark_announced(manifest.version, event.event_id, topic)
    log_event(log, "irpo: announced", version=manifest.version, topic=topic, event_id=event.event_id)
    return True


# --------------------------------------------------------------------------- the online data window
def online_window(client, policy_version: str) -> dict[str, Any]:
    """What ``policy_version`` earned online so far, from the warehouse (recorded in the manifest's data window)."""
    from llm_auction.infra.ddl import DATABASE

    res = client.query(
        f"SELECT count(), min(ts), max(ts) FROM {DATABASE}.responses FINAL WHERE policy_version = {{v:String}}",
        parameters={"v": policy_version},
    )
    n, first, last = res.result_rows[0]
    return {"policy_version": policy_version, "responses": int(n), "first_ts": str(first) if n else None, "last_ts": str(last) if n else None}


# --------------------------------------------------------------------------- evaluation
def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean and its bootstrap (percentile) interval."""
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    return float(v.mean()), float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def expected_revenue(samples: pd.DataFrame) -> pd.Series:
    """Per answer, sum of bid x click probability over its exposed ads (revenue per query before the click draw)."""
    return pd.Series([sum(json.loads(b)[a] * p for a, p in json.loads(c).items()) for b, c in zip(samples["bids"], samples["pctr"])], index=samples.index, dtype=float)


def evaluation_summary(samples: pd.DataFrame) -> dict[str, Any]:
    """Mean reward, expected revenue per query, format-error rate and ads per answer, each with a
    bootstrap 95% interval over queries (a query's answers are averaged first)."""
    df = samples.assign(revenue=expected_revenue(samples), format_error=samples["format_error"].astype(float))
    per_query = df.groupby("query_id")[["reward", "revenue", "format_error", "n_ads"]].mean()
    out: dict[str, Any] = {"answers": len(df)}
    for col, name in (("reward", "mean_reward"), ("revenue", "revenue_per_query"), ("format_error", "format_error_rate"), ("n_ads", "mean_ads")):
        mean, low, high = bootstrap_mean_ci(per_query[col].to_numpy())
        out[name] = {"mean": round(mean, 3), "ci95": [round(low, 3), round(high, 3)]}
    return out


def paired_difference(after: pd.DataFrame, before: pd.DataFrame) -> dict[str, Any]:
    """``after - before`` per query (same queries and bids), mean reward and expected revenue, with bootstrap 95% intervals."""
    out = {}
    for name, f in (("mean_reward", lambda d: d["reward"]), ("revenue_per_query", expected_revenue)):
        a = after.assign(v=f(after)).groupby("query_id")["v"].mean()
        b = before.assign(v=f(before)).groupby("query_id")["v"].mean()
        mean, low, high = bootstrap_mean_ci((a - b.reindex(a.index)).to_numpy())
        out[name] = {"mean": round(mean, 3), "ci95": [round(low, 3), round(high, 3)]}
    return out


def evaluate_policy(backend, queries: Sequence[QueryEvent], policy_version: str, pctr: PctrFn, m: int = 1, lam: float = 1.0) -> pd.DataFrame:
    """Fresh answers of ``policy_version`` to ``queries`` (already narrowed), scored by Eq. 8."""
    answers = sample_answers(backend, queries, policy_version, m)
    return score_samples(queries, answers, pctr, lam)

