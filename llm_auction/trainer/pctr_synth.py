"""Synthetic impressions drawn from a KNOWN click function, to test and benchmark pCTR fitting.

Real clicks come from the user simulator; to check that the network learns at all we need
data whose true click probability we can write down:

    p = sigmoid(w * (cos(phi(query), phi(ad title)) - c) + ad_bias[ad] + user_bias[user] + base)

with phi the same frozen text encoder the pCTR model sees, c the mean relevance (so ``base``
sets the CTR), and per-ad / per-user biases that only the id embeddings can learn. The true
probability travels with every row (``click_probability``), so an "oracle" AUC (the ceiling
any model can reach on these draws) and calibration against the truth can be reported.

Traffic has the shape of the stream: queries built from the world vocabulary (templates over
a user's interests), each answered by a few different responses that show 1-3 ads (half
relevant to the query, half random, as an untrained policy would pick), each response served
``replays`` times with fresh clicks. Unique texts stay small (queries + responses) so the
encoder cost is bounded while the impression count grows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources

import numpy as np
import pandas as pd

from llm_auction.schemas.catalog import load_catalog

LEADS = (
    "Here is a short answer to your question.",
    "Good question! A few practical tips follow.",
    "Start small, stay consistent, and pick gear you will actually use.",
    "It depends on your budget, but these ideas work for most people.",
    "Many people find that a simple routine beats an expensive setup.",
    "Plan ahead, compare options, and read a few reviews before buying.",
)


@dataclass(frozen=True)
class KnownClickFunction:
    """The ground truth: ``p = sigmoid(w * (rel - center) + ad_bias + user_bias + base)``."""

    w: float = 10.0
    base: float = -2.2
    ad_bias_sd: float = 0.8
    user_bias_sd: float = 0.4



def pick_ads(rng: np.random.Generator, top: np.ndarray, n_ads: int, max_ads: int = 3) -> list[int]:
    """1..max_ads distinct ad indices for one answer: each a relevant one (from ``top``) or any ad, at even odds."""
    k = int(rng.integers(1, max_ads + 1))
    chosen: list[int] = []
    while len(chosen) < k:
        j = int(rng.choice(top)) if rng.random() < 0.5 else int(rng.integers(n_ads))
        if j not in chosen:
            chosen.append(j)
    return chosen

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def synthetic_impressions(
    encoder,
    n_queries: int = 1000,
    answers_per_query: int = 2,
    replays: int = 4,
    n_users: int | None = None,
    seed: int = 0,
    truth: KnownClickFunction = KnownClickFunction(),
    query_prefix: str = "q",
) -> pd.DataFrame:
    """Impressions (one row per exposed ad) with columns query_id, response_id, user_id, query,
    text, ad_id, clicked, click_probability, relevance, ts. ``encoder`` needs
    ``encode(texts) -> [n, d]`` of unit-norm rows (a :class:`~llm_auction.models.encoder.TextEncoder`).

    Clicks come from their own random stream, so the texts (and the encoder cache they fill)
    depend only on ``seed``, ``n_queries`` and ``answers_per_query``, not on ``replays``.
    """
    rng = np.random.default_rng(seed)
    click_rng = np.random.default_rng([seed, 1])
    vocab = json.loads(resources.files("llm_auction.data").joinpath("world_vocab.json").read_text(encoding="utf-8"))
    interests = sorted(vocab["interests"])
    templates = vocab["query_templates"]
    ads = load_catalog()
    n_users = n_users or max(1, n_queries // 5)

    user_interests = [rng.choice(len(interests), size=3, replace=False) for _ in range(n_users)]
    q_user = rng.integers(0, n_users, n_queries)
    q_text = []
    for i in range(n_queries):
        its = user_interests[q_user[i]]
        a, b = rng.choice(its, 2, replace=False)
        t = templates[rng.integers(len(templates))]
        q_text.append(
            t.format(interest=interests[a], interest2=interests[b], season=rng.choice(vocab["seasons"]), occupation=rng.choice(vocab["occupations"]), age=int(rng.choice(vocab["ages"])))
        )

    title_emb = encoder.encode([ad.title for ad in ads])
    query_emb = encoder.encode(q_text)
    rel = query_emb @ title_emb.T  # [n_queries, n_ads] cosine (unit-norm rows)
    center = float(rel.mean())
    ad_bias = rng.normal(0.0, truth.ad_bias_sd, len(ads))
    user_bias = rng.normal(0.0, truth.user_bias_sd, n_users)

    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    rows: dict[str, list] = {k: [] for k in ("query_id", "response_id", "user_id", "query", "text", "ad_id", "clicked", "click_probability", "relevance", "ts")}
    tick = 0
    for i in range(n_queries):
        top = np.argsort(-rel[i])[:10]
        for n_answer in range(answers_per_query):
            chosen = pick_ads(rng, top, len(ads))
            lead = LEADS[rng.integers(len(LEADS))]
            text = " ".join([lead] + [f"You might like @{ads[j].title}@[{ads[j].ad_id}]." for j in chosen])
            p = _sigmoid(truth.w * (rel[i, chosen] - center) + ad_bias[chosen] + user_bias[q_user[i]] + truth.base)
            for n_replay in range(replays):
                clicks = click_rng.random(len(chosen)) < p
                ts = t0 + timedelta(seconds=tick)
                tick += 1
                for j, pj, c in zip(chosen, p, clicks):
                    rows["query_id"].append(f"{query_prefix}{i:06d}")
                    rows["response_id"].append(f"{query_prefix}{i:06d}-a{n_answer}-r{n_replay}")
                    rows["user_id"].append(f"u{q_user[i]:05d}")
                    rows["query"].append(q_text[i])
                    rows["text"].append(text)
                    rows["ad_id"].append(ads[j].ad_id)
                    rows["clicked"].append(bool(c))
                    rows["click_probability"].append(float(pj))
                    rows["relevance"].append(float(rel[i, j]))
                    rows["ts"].append(ts)
    return pd.DataFrame(rows)
