"""The mechanism properties the paper measures (section 5.4, Figure 4), and what they imply for bidders.

The allocation of one ad is its ITCTR: the probability that it is shown and clicked, i.e. its
click probability in an answer times 1{the answer exposes it}, with the click probability taken
from a click function (the simulator's exact one, or a held-out judge). Three measurements:

- :func:`monotonicity`: per query one ad (seeded), its bid set to each level (paper: 1, 10, ...,
  100) with every other bid fixed, answers generated, ITCTR averaged per level; the Spearman
  correlation of bid level and mean ITCTR (Figure 4(a); first price is sound when it is high);
- :func:`continuity`: one query and one ad, the bid swept (1..100), N answers per bid, the raw
  and smoothed ITCTR curve and its largest jump between neighbouring bids (Figure 4(b));
- :func:`incentives`: from a measured curve x(b), a bidder's first-price utility: a utility
  maximizer with value v earns x(b) (v - b), a value maximizer with ROI target tau earns x(b) v
  subject to v / b >= tau; their best responses against truthful bidding, individual rationality
  when truthful, and the bids where the curve breaks monotonicity.

Answers come through the ``AdLLM`` protocol (any backend, any served policy version); nothing
here trains or writes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.ndimage import uniform_filter1d
from tqdm import tqdm

from llm_auction.auction import allocate
from llm_auction.schemas import Candidates, QueryEvent

from .reward import PctrFn

PAPER_BID_LEVELS = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)


def with_bid(query: QueryEvent, ad_id: str, bid: int) -> QueryEvent:
    """``query`` with ``ad_id``'s bid set to ``bid``, every other candidate and bid as they were."""
    rows = [[c.ad_id, bid if c.ad_id == ad_id else c.bid] for c in query.candidates]
    if not any(a == ad_id for a, _ in rows):
        raise ValueError(f"{ad_id} is not a candidate of query {query.query_id}")
    return query.model_copy(update={"candidates": Candidates.of(rows)})


def itctr(queries: Sequence[QueryEvent], answers: Sequence[str], ad_ids: Sequence[str], click: PctrFn) -> list[tuple[float, bool]]:
    """Per answer, (ITCTR of its ad, whether the answer exposes it): the click probability if exposed, else 0."""
    allocs = [allocate(t, q.candidates) for q, t in zip(queries, answers)]
    probs = click([(q, t, a.exposed) for q, t, a in zip(queries, answers, allocs)])
    return [(float(p.get(ad, 0.0)), True) if ad in a.exposed else (0.0, False) for a, p, ad in zip(allocs, probs, ad_ids)]


def _sweep(backend, version: str, variants: list[tuple[QueryEvent, str, int]], samples: int, click: PctrFn, batch_size: int, desc: str) -> pd.DataFrame:
    """``samples`` answers per (query variant, ad, bid), one row per answer with its ITCTR."""
    rows = []
    for i in tqdm(range(0, len(variants), batch_size), desc=desc, unit="batch", disable=None):
        chunk = variants[i : i + batch_size]
        got = backend.generate([q for q, _, _ in chunk], version, n=samples)
        flat = [(q, ad, bid, j, t) for (q, ad, bid), texts in zip(chunk, got) for j, t in enumerate(texts)]
        values = itctr([f[0] for f in flat], [f[4] for f in flat], [f[1] for f in flat], click)
        rows += [{"query_id": q.query_id, "ad_id": ad, "bid": bid, "sample": j, "itctr": v, "exposed": e} for (q, ad, bid, j, _), (v, e) in zip(flat, values)]
    return pd.DataFrame(rows, columns=["query_id", "ad_id", "bid", "sample", "itctr", "exposed"])


@dataclass
class Monotonicity:
    rows: pd.DataFrame  # one per answer: query_id, ad_id, bid, sample, itctr, exposed
    by_bid: pd.DataFrame  # per bid level: mean itctr, exposure rate, answers
    spearman: float  # Spearman(bid level, mean ITCTR); nan when ITCTR is constant
    spearman_p: float


def monotonicity(backend, version: str, queries: Sequence[QueryEvent], click: PctrFn, *, bids: Sequence[int] = PAPER_BID_LEVELS,
                 samples: int = 1, seed: int = 0, batch_size: int = 8) -> Monotonicity:
    """Figure 4(a): per query one candidate ad (seeded), swept over ``bids``; ``samples`` answers per bid."""
    rng = random.Random(seed)
    variants = []
    for q in queries:
        ad = rng.choice(list(q.candidates.ad_ids))
        variants += [(with_bid(q, ad, b), ad, b) for b in bids]
    rows = _sweep(backend, version, variants, samples, click, batch_size, "monotonicity")
    by_bid = rows.groupby("bid").agg(itctr=("itctr", "mean"), exposure=("exposed", "mean"), answers=("itctr", "size")).reset_index()
    if by_bid["itctr"].nunique() < 2:
        rho, p = float("nan"), float("nan")
    else:
        res = stats.spearmanr(by_bid["bid"], by_bid["itctr"])
        rho, p = float(res.statistic), float(res.pvalue)
    return Monotonicity(rows, by_bid, rho, p)


@dataclass
class Continuity:
    curve: pd.DataFrame  # per bid: raw mean itctr, smoothed, exposure, answers
    max_jump: float  # the largest |difference| of the smoothed curve between neighbouring bids
    max_jump_at: int  # the bid after which it happens


def continuity(backend, version: str, query: QueryEvent, ad_id: str, click: PctrFn, *, bids: Sequence[int] = tuple(range(1, 101)),
               samples: int = 20, smooth: int = 9, batch_size: int = 8) -> Continuity:
    """Figure 4(b): ``ad_id``'s bid in ``query`` swept over ``bids``, ``samples`` answers each; the
    curve smoothed by a centred moving average of ``smooth`` bids (edges: nearest)."""
    rows = _sweep(backend, version, [(with_bid(query, ad_id, b), ad_id, b) for b in bids], samples, click, batch_size, "continuity")
    curve = rows.groupby("bid").agg(itctr=("itctr", "mean"), exposure=("exposed", "mean"), answers=("itctr", "size")).reset_index()
    return _continuity(curve, smooth)


def _continuity(curve: pd.DataFrame, smooth: int) -> Continuity:
    curve = curve.sort_values("bid").reset_index(drop=True)
    curve["smoothed"] = uniform_filter1d(curve["itctr"].to_numpy(dtype=float), size=max(1, smooth), mode="nearest")
    jumps = np.abs(np.diff(curve["smoothed"].to_numpy()))
    i = int(np.argmax(jumps)) if jumps.size else 0
    return Continuity(curve, float(jumps[i]) if jumps.size else 0.0, int(curve["bid"].iloc[i]) if len(curve) else 0)


def step_curve(bids: Sequence[int], rival_score: float, pctr: float, clicked_if_shown: float) -> pd.DataFrame:
    """The slot auction's ITCTR for one ad as its bid moves: it wins the slot, and is shown, iff
    bid x pCTR beats the best rival's bid x pCTR (``rival_score``); shown, it is clicked with
    probability ``clicked_if_shown``. A step at rival_score / pCTR: what LLM-Auction's curve is compared with."""
    won = [float(b * pctr > rival_score) for b in bids]
    return pd.DataFrame({"bid": list(bids), "itctr": [w * clicked_if_shown for w in won], "exposure": won})


def incentives(curve: pd.DataFrame, value: float, roi_target: float = 1.0, tolerance: float = 0.0) -> dict[str, Any]:
    """A bidder's first-price incentives from a measured ITCTR curve (columns ``bid``, ``itctr``; the
    smoothed column when present). ``tolerance``: a drop up to this between neighbours is noise."""
    if value <= 0 or roi_target <= 0:
        raise ValueError(f"value and roi_target must be > 0, got {value}, {roi_target}")
    col = "smoothed" if "smoothed" in curve else "itctr"
    c = curve.sort_values("bid")
    b, x = c["bid"].to_numpy(dtype=float), c[col].to_numpy(dtype=float)
    u = x * (value - b)  # utility maximizer, first price per click
    truthful = int(np.argmin(np.abs(b - value)))
    best = int(np.argmax(u))
    allowed = b <= value / roi_target  # value maximizer: value per cost at least roi_target
    vm = int(np.argmax(np.where(allowed, x, -np.inf))) if allowed.any() else None
    drops = [int(b[i + 1]) for i in range(len(b) - 1) if x[i + 1] < x[i] - tolerance]
    return {
        "value": value, "roi_target": roi_target,
        "utility_maximizer": {"best_bid": float(b[best]), "best_utility": float(u[best]), "truthful_bid": float(b[truthful]),
                              "truthful_utility": float(u[truthful]), "gain_over_truthful": float(u[best] - u[truthful]),
                              "individually_rational_when_truthful": bool(u[truthful] >= 0)},
        "value_maximizer": None if vm is None else {"best_bid": float(b[vm]), "value": float(x[vm] * value), "itctr": float(x[vm])},
        "monotonicity_breaks_at": drops,
    }


__all__ = ["Continuity", "Monotonicity", "PAPER_BID_LEVELS", "continuity", "incentives", "itctr", "monotonicity", "step_curve", "with_bid"]
