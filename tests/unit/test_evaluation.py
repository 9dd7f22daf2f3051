"""The evaluation's rescoring (trainer/evaluation.py): the same answers under another click function."""

from __future__ import annotations

import pandas as pd

from llm_auction.schemas import CandidateAd, QueryEvent, UserProfile
from llm_auction.schemas.catalog import load_catalog
from llm_auction.trainer.evaluation import evaluation_summary, rescore
from llm_auction.trainer.irpo import score_samples

ADS = load_catalog()[:3]


def _query(qid):
    return QueryEvent(query_id=qid, user=UserProfile(user_id="u", info="A reader.", interests=["coffee"]), query="Coffee?",
                      candidates=[CandidateAd(**a.model_dump(), bid=b) for a, b in zip(ADS, (20, 40, 60))])


def const(p):
    return lambda items: [{ad: p for ad in ads} for _, _, ads in items]


def test_rescore_keeps_the_answers_and_changes_only_the_click_probabilities():
    qs = {q.query_id: q for q in (_query("a"), _query("b"))}
    texts = [[f"Try @{ADS[0].title}@[{ADS[0].ad_id}].", "No ad."], [f"@{ADS[2].title}@[{ADS[2].ad_id}] is good.", "Nothing."]]
    before = score_samples(list(qs.values()), texts, const(0.1))
    after = rescore(before, qs, const(0.5))
    expected = score_samples(list(qs.values()), texts, const(0.5))
    pd.testing.assert_frame_equal(after, expected)
    assert after["text"].tolist() == before["text"].tolist() and (after["reward"] >= before["reward"]).all()
    assert evaluation_summary(after)["revenue_per_query"]["mean"] == (20 * 0.5 / 2 + 60 * 0.5 / 2) / 2
