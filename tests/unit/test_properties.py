"""Mechanism properties (trainer/properties.py): ITCTR sweeps, Spearman, continuity, incentives.

A scripted backend whose answer depends on the bid it is shown stands in for the policy, so the
curves are known in advance; the sweeps, the statistics and the utility algebra are the real code.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from llm_auction.schemas import CandidateAd, QueryEvent, UserProfile
from llm_auction.schemas.catalog import load_catalog
from llm_auction.trainer.properties import continuity, incentives, monotonicity, step_curve, with_bid

ADS = load_catalog()[:4]


def _query(qid="q1") -> QueryEvent:
    return QueryEvent(query_id=qid, user=UserProfile(user_id="u1", info="A reader.", interests=["coffee"]), query="Best coffee grinder?",
                      candidates=[CandidateAd(**a.model_dump(), bid=b) for a, b in zip(ADS, (10, 50, 90, 3))])


class BidReader:
    """Names every candidate whose bid is at least ``threshold``."""

    def __init__(self, threshold: int):
        self.threshold = threshold

    def generate(self, queries, version, n=1):
        return [[" ".join(f"@{c.title}@[{c.ad_id}]" for c in q.candidates if c.bid >= self.threshold) or "No ad."] * n for q in queries]


def click(items):
    return [{ad: 0.25 for ad in ads} for _, _, ads in items]


def test_with_bid_changes_one_bid_only():
    q = with_bid(_query(), ADS[1].ad_id, 7)
    assert [c.bid for c in q.candidates] == [10, 7, 90, 3] and q.query_id == "q1"
    with pytest.raises(ValueError, match="not a candidate"):
        with_bid(_query(), "Ad-0000", 7)


def test_monotone_policy_gives_spearman_one_and_a_constant_one_nan():
    qs = [_query(f"q{i}") for i in range(6)]
    m = monotonicity(BidReader(50), "base", qs, click, samples=2, seed=3)
    assert len(m.rows) == 6 * 11 * 2
    lo = m.by_bid[m.by_bid.bid < 50]
    hi = m.by_bid[m.by_bid.bid >= 50]
    assert (lo.itctr == 0).all() and (hi.itctr == 0.25).all() and (hi.exposure == 1).all()
    assert m.spearman > 0.8  # ties within each side: rank correlation of a step
    flat = monotonicity(BidReader(1000), "base", qs, click)
    assert math.isnan(flat.spearman) and (flat.by_bid.itctr == 0).all()


def test_continuity_finds_the_step():
    c = continuity(BidReader(60), "base", _query(), ADS[0].ad_id, click, bids=range(1, 101), samples=1, smooth=1)
    assert c.max_jump == pytest.approx(0.25) and c.max_jump_at == 59
    smoothed = continuity(BidReader(60), "base", _query(), ADS[0].ad_id, click, bids=range(1, 101), samples=1, smooth=9)
    assert smoothed.max_jump == pytest.approx(0.25 / 9)  # a moving average spreads the step over 9 bids


def test_slot_step_curve():
    s = step_curve(range(1, 101), rival_score=20.0, pctr=0.4, clicked_if_shown=0.3)
    assert s.loc[s.bid <= 50, "itctr"].eq(0).all() and s.loc[s.bid > 50, "itctr"].eq(0.3).all()


def test_incentives_on_a_known_curve():
    curve = pd.DataFrame({"bid": range(1, 101), "itctr": [b / 100 for b in range(1, 101)]})
    r = incentives(curve, value=80, roi_target=2)
    um = r["utility_maximizer"]
    assert um["best_bid"] == 40 and um["best_utility"] == pytest.approx(0.4 * 40)  # argmax b (80 - b) / 100
    assert um["truthful_bid"] == 80 and um["truthful_utility"] == 0 and um["individually_rational_when_truthful"]
    assert r["value_maximizer"]["best_bid"] == 40  # v / b >= 2
    assert r["monotonicity_breaks_at"] == []
    bumpy = curve.assign(itctr=[0.5 if b == 30 else b / 100 for b in range(1, 101)])
    assert incentives(bumpy, value=80)["monotonicity_breaks_at"] == [31]
    with pytest.raises(ValueError):
        incentives(curve, value=0)
