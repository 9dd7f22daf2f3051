"""Held-out evaluation of a policy version: fresh answers to test queries, scored by Eq. 8.

``irpo evaluate`` samples each version on the same queries and bids and reports per-query means
with intervals (:mod:`.stats`): reward, expected revenue (bid x click probability over exposed
ads: revenue before the click draw), format-error rate and ads per answer, and the paired
difference between two versions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from llm_auction.schemas import QueryEvent

from .irpo import sample_answers, score_samples
from .reward import PctrFn
from .stats import interval


def evaluate_versions(cfg, versions: Sequence[str], *, world, model, registry, encoder, settings, samples: int, pctr_version: str | None = None,
                      merge_lora: bool | None = None) -> dict[str, Any]:
    """``samples`` fresh answers of each policy version (or ``"base"``) to ``cfg``'s queries with
    ``cfg.bid_seed``'s bids, through ``cfg.backend`` with the responder's narrowing, scored by
    ``cfg.reward``; per version the :func:`evaluation_summary`, and with two versions the
    :func:`paired_difference` of the first against the second (same queries and bids); the same
    answers rescored under the held-out judge (:func:`held_out_judge`) beside them."""
    from llm_auction.models.retrieval import candidate_picker

    from . import irpo
    from .epoch_setup import open_sampler
    from .reward import open_reward

    reward = open_reward(cfg.reward, settings=settings, encoder=encoder, registry_root=registry.root, pctr_version=pctr_version)
    queries = irpo.narrow(irpo.build_offline_set(world, cfg, irpo.epoch_bid_seed(cfg, "evaluate")), candidate_picker(cfg.candidates_k, encoder))
    with open_sampler(cfg, settings, model, registry, versions, merge_lora) as backend:
        frames = {v: evaluate_policy(backend, queries, v, reward.score, m=samples, lam=cfg.lam) for v in versions}
    judge = held_out_judge(settings, encoder)
    by_id = {q.query_id: q for q in queries}
    judged = {v: rescore(f, by_id, judge.score, cfg.lam) for v, f in frames.items()}
    report = {"queries": len(queries), "samples": samples, "pctr_version": reward.version, "candidates_k": cfg.candidates_k, "seed": cfg.bid_seed,
              "lam": cfg.lam, "policies": {v: evaluation_summary(f) for v, f in frames.items()},
              "judge": {"name": judge.version, "policies": {v: evaluation_summary(f) for v, f in judged.items()}}}
    if len(versions) == 2:
        report["difference"] = paired_difference(frames[versions[0]], frames[versions[1]])
        report["judge"]["difference"] = paired_difference(judged[versions[0]], judged[versions[1]])
    return report


JUDGE = "held-out-judge"


def held_out_judge(settings, encoder):
    """Click probabilities of the held-out judge (``models.user_sim.embedding.HELD_OUT_JUDGE``): a
    second click model with other weights, fixed before any training, that no policy was trained
    on, so a gain that holds only under the training simulator shows as such."""
    from llm_auction.models.user_sim import make_user_simulator
    from llm_auction.models.user_sim.embedding import HELD_OUT_JUDGE

    from .reward import Reward, oracle_pctr

    return Reward(oracle_pctr(make_user_simulator("embedding", seed=settings.seed, encoder=encoder, config=HELD_OUT_JUDGE)), JUDGE)


def rescore(samples: pd.DataFrame, queries: dict[str, QueryEvent], pctr: PctrFn, lam: float = 1.0) -> pd.DataFrame:
    """The same answers (``samples``' texts, in order) scored by Eq. 8 under another click function."""
    texts = samples.sort_values("sample", kind="stable").groupby("query_id", sort=False)["text"].agg(list)
    return score_samples([queries[q] for q in texts.index], texts.tolist(), pctr, lam)


def evaluate_policy(backend, queries: Sequence[QueryEvent], policy_version: str, pctr: PctrFn, m: int = 1, lam: float = 1.0) -> pd.DataFrame:
    """Fresh answers of ``policy_version`` to ``queries`` (already narrowed), scored by Eq. 8."""
    answers = sample_answers(backend, queries, policy_version, m)
    return score_samples(queries, answers, pctr, lam)


def expected_revenue(samples: pd.DataFrame) -> pd.Series:
    """Per answer, sum of bid x click probability over its exposed ads (revenue per query before the click draw)."""
    return pd.Series([sum(json.loads(b)[a] * p for a, p in json.loads(c).items()) for b, c in zip(samples["bids"], samples["pctr"])], index=samples.index, dtype=float)


def _ci(values) -> dict[str, Any]:
    return interval(values, digits=3)


def evaluation_summary(samples: pd.DataFrame) -> dict[str, Any]:
    """Mean reward, expected revenue per query, format-error rate and ads per answer, each with a
    bootstrap 95% interval over queries (a query's answers are averaged first)."""
    df = samples.assign(revenue=expected_revenue(samples), format_error=samples["format_error"].astype(float))
    per_query = df.groupby("query_id")[["reward", "revenue", "format_error", "n_ads"]].mean()
    out: dict[str, Any] = {"answers": len(df)}
    for col, name in (("reward", "mean_reward"), ("revenue", "revenue_per_query"), ("format_error", "format_error_rate"), ("n_ads", "mean_ads")):
        out[name] = _ci(per_query[col].to_numpy())
    return out


def paired_difference(after: pd.DataFrame, before: pd.DataFrame) -> dict[str, Any]:
    """``after - before`` per query (same queries and bids), mean reward and expected revenue, with bootstrap 95% intervals."""
    out = {}
    for name, f in (("mean_reward", lambda d: d["reward"]), ("revenue_per_query", expected_revenue)):
        a = after.assign(v=f(after)).groupby("query_id")["v"].mean()
        b = before.assign(v=f(before)).groupby("query_id")["v"].mean()
        out[name] = _ci((a - b.reindex(a.index)).to_numpy())
    return out


__all__ = ["JUDGE", "evaluate_policy", "evaluate_versions", "held_out_judge", "rescore", "evaluation_summary", "expected_revenue", "paired_difference"]
