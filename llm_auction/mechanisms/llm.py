"""LLM-native mechanisms: one answer of a policy version, or the best of N by Eq. 8.

:class:`PolicySample` is LLM-Auction itself (a policy version, one sample) and, on the base
model, the paper's "pretrained" baseline. :class:`BestOfN` is the paper's re-implementation of
MOSAIC: N answers of the pretrained policy, the one with the highest Eq. 8 reward under the pCTR
model being served. MOSAIC's own selection is a softmax over the rewards with a KL term to the
reference policy; since the N answers are drawn from that reference, sampling one with
probability proportional to exp(R / temperature) targets the same KL-regularized optimum
(``selection="softmax"``). Prices are first price (Eq. 7) for both; MOSAIC's Rochet-style
payments are not implemented.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

from llm_auction.auction import allocate, reward
from llm_auction.schemas import QueryEvent

from .base import Cost, Outcome, ScoreFn, TokenCounter, first_price, generate_timed, token_counter


class PolicySample:
    """One answer of policy ``version`` (the base: the pretrained baseline)."""

    def __init__(self, backend, version: str, *, name: str | None = None, count_tokens: TokenCounter | None = None):
        self.backend, self.version = backend, version
        self.name = name or f"policy:{version}"
        self.count_tokens = count_tokens or token_counter(backend)

    def run(self, queries: Sequence[QueryEvent]) -> list[Outcome]:
        answers, seconds = generate_timed(self.backend, queries, self.version, 1)
        out = []
        for q, (text,) in zip(queries, answers):
            alloc = allocate(text, q.candidates)
            out.append(Outcome(q.query_id, text, alloc, first_price(alloc, q), Cost(1, self.count_tokens(text), seconds), {"version": self.version}))
        return out


class BestOfN:
    """N answers of ``version``; the one with the highest Eq. 8 reward under ``score`` (``argmax``,
    the first on ties), or one drawn with probability proportional to exp(reward / temperature)
    (``softmax``, MOSAIC's own rule; seeded)."""

    def __init__(
        self, backend, version: str, score: ScoreFn, *, n: int = 20, lam: float = 1.0, selection: Literal["argmax", "softmax"] = "argmax",
        temperature: float = 10.0, seed: int = 0, name: str | None = None, count_tokens: TokenCounter | None = None,
    ):
        if n < 1:
            raise ValueError(f"best-of-N needs n >= 1, got {n}")
        if selection not in ("argmax", "softmax") or temperature <= 0:
            raise ValueError(f"selection must be argmax|softmax with temperature > 0, got {selection!r}, {temperature}")
        self.backend, self.version, self.score, self.n, self.lam = backend, version, score, n, lam
        self.selection, self.temperature, self.rng = selection, temperature, random.Random(seed)
        self.name = name or f"mosaic:{n}"
        self.count_tokens = count_tokens or token_counter(backend)

    def pick(self, rewards: Sequence[float]) -> int:
        """The chosen sample's index."""
        if self.selection == "argmax":
            return max(range(len(rewards)), key=lambda i: (rewards[i], -i))
        top = max(rewards)
        weights = [math.exp((r - top) / self.temperature) for r in rewards]
        return self.rng.choices(range(len(rewards)), weights=weights)[0]

    def run(self, queries: Sequence[QueryEvent]) -> list[Outcome]:
        answers, seconds = generate_timed(self.backend, queries, self.version, self.n)
        allocs = [[allocate(t, q.candidates) for t in texts] for q, texts in zip(queries, answers)]
        items = [(q, t, a.exposed) for q, texts, al in zip(queries, answers, allocs) for t, a in zip(texts, al)]
        pctrs = iter(self.score(items))
        out = []
        for q, texts, al in zip(queries, answers, allocs):
            bids = q.bids()
            rewards = [reward(a, bids, {ad: p[ad] for ad in a.exposed}, self.lam) for a, p in zip(al, (next(pctrs) for _ in texts))]
            i = self.pick(rewards)
            cost = Cost(self.n, sum(self.count_tokens(t) for t in texts), seconds)
            out.append(Outcome(q.query_id, texts[i], al[i], first_price(al[i], q), cost, {"version": self.version, "chosen": i, "rewards": rewards}))
        return out


__all__ = ["BestOfN", "PolicySample"]
