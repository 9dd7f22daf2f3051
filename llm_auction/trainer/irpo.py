"""One IRPO epoch (paper Algorithm 1, the learning leg): sample, score, pair, DPO, publish.

Read top to bottom; each stage is one function with one job:

1. :func:`build_offline_set`  world queries of one split, with bids redrawn for this epoch;
2. :func:`narrow`             the responder's candidate narrowing (``models.retrieval.candidate_picker``);
3. :func:`sample_answers`     M answers per query from the policy the epoch starts from, through
                              the serving backend (the ``AdLLM`` protocol: transformers or vLLM);
4. :func:`score_samples`      Eq. 8 for every answer, click probabilities from the epoch's reward
                              (:mod:`.reward`: the ONNX pCTR, or the simulator's exact ones);
5. :func:`make_pairs`         winner = argmax reward, losers = r_w - r_l > delta_th;
6. :func:`~.dpo.train_dpo`    TRL ``DPOTrainer`` on a LoRA adapter, reference = the starting policy;
7. :func:`run_epoch`          the above in a private work folder of the registry, then the audit
                              files and :meth:`ModelRegistry.publish` (atomic).

Announcing the version is the caller's next step (``producers.versions.announce``). Everything
the epoch writes goes to the registry's work folder; only ``publish`` (copy to a hidden folder,
rename) makes a version visible, so an exception or a kill before it leaves the registry as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from llm_auction.auction import allocate, reward
from llm_auction.logs import log_event
from llm_auction.schemas import Candidates, QueryEvent

from .dpo import DPOResult, dpo_rows, train_dpo
from .irpo_config import IRPOConfig
from .registry import Manifest, ModelRegistry
from .reward import PctrFn, Reward

log = logging.getLogger(__name__)

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

# --------------------------------------------------------------------------- 7. the epoch
@dataclass
class EpochResult:
    manifest: Manifest | None  # None when no pair formed (nothing to learn, nothing published)
    metrics: dict[str, Any]
    samples: pd.DataFrame
    pairs: pd.DataFrame
    stage_s: dict[str, float]
    reward_version: str  # what scored the samples: a pCTR version or "oracle"


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
    reward: Reward,
    parent: str | None = None,
    pick: Callable | None = None,
    data_window_extra: dict[str, Any] | None = None,
    close_backend: bool = False,
) -> EpochResult:
    """One epoch from policy ``parent`` (None: the base model) to a published policy version.

    ``backend`` serves ``parent`` (it must have loaded it) and the base under its ``base_version``;
    ``reward`` scores exposed ads (:func:`~.reward.open_reward`); ``pick`` narrows the candidates
    as the responder does. ``close_backend`` closes the backend once the answers are sampled, so a
    serving engine's processes (vLLM) do not compete with DPO for the cores. The version is
    published, not announced: that is the caller's next step.
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
    samples = score_samples(queries, answers, reward.score, cfg.lam)
    stage_s["score"] = time.perf_counter() - t

    pairs, skipped = pair_table(samples, cfg.delta_th, cfg.pairing)
    metrics: dict[str, Any] = {
        "queries": len(queries), "samples": len(samples), "pairs": len(pairs), "skipped_queries": skipped,
        **reward_stats(samples),
        "reward_margin": float((pairs["chosen_reward"] - pairs["rejected_reward"]).mean()) if len(pairs) else float("nan"),
    }
    log_event(log, "irpo: pairs", parent=policy_version, reward=reward.version, **metrics)
    if pairs.empty:
        log_event(log, "irpo: no pair formed, nothing to learn; nothing published", level=logging.WARNING, parent=policy_version)
        return EpochResult(None, metrics, samples, pairs, stage_s, reward.version)

    window = {
        "split": cfg.split, "query_offset": cfg.query_offset, "queries": len(queries),
        "first_query_id": queries[0].query_id, "last_query_id": queries[-1].query_id,
        "bid_seed": seed, "oracle": reward.oracle, **(data_window_extra or {}),
    }
    with registry.work_folder() as work:
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
                "pctr_version": reward.version,
                "config": cfg.to_dict(),
                "stage_s": {k: round(v, 3) for k, v in stage_s.items()},
            },
        )
        stage_s["publish"] = time.perf_counter() - t
    log_event(log, "irpo: epoch done", version=manifest.version, parent=parent, **{f"{k}_s": round(v, 2) for k, v in stage_s.items()})
    return EpochResult(manifest, metrics, samples, pairs, stage_s, reward.version)


__all__ = [
    "BASE_VERSION", "DPOResult", "EpochResult", "PAIRS_FILE", "SAMPLES_FILE", "build_offline_set", "epoch_bid_seed", "make_pairs",
    "narrow", "pair_table", "reward_stats", "run_epoch", "sample_answers", "score_samples",
]
