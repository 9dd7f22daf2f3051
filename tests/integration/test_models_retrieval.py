"""Candidate retrieval with the real MiniLM encoder: relevant ads first, deterministic, no-op for large k."""

import pytest

from llm_auction.models.retrieval import RetrievalSelector, top_k_candidates
from llm_auction.schemas import CandidateAd, QueryEvent, UserProfile
from llm_auction.schemas.catalog import load_catalog

pytestmark = pytest.mark.integration  # loads MiniLM

COFFEE = {a.ad_id for a in load_catalog() if a.category in ("coffee", "coffee ware")}


def query(text: str, interests: list[str], qid: str = "r1") -> QueryEvent:
    return QueryEvent(
        query_id=qid,
        user=UserProfile(user_id="u", info="A 29-year-old designer living in a big city, single.", interests=interests),
        query=text,
        candidates=[CandidateAd(**a.model_dump(), bid=1 + i % 100) for i, a in enumerate(load_catalog())],
    )


def test_coffee_query_retrieves_the_coffee_ads(text_encoder):
    assert len(COFFEE) == 4
    q = query("How do I brew a better cup of coffee at home in the morning?", ["coffee", "reading"])
    top = top_k_candidates(q, 4, text_encoder)
    assert {c.ad_id for c in top} == COFFEE
    assert [c.ad_id for c in top_k_candidates(q, 4, text_encoder)] == [c.ad_id for c in top]  # deterministic


def test_retrieval_follows_the_question_not_the_bids(text_encoder):
    q = query("Which tent should I take on my first camping trip?", ["camping", "hiking"])
    top = top_k_candidates(q, 3, text_encoder)
    cats = {c.category for c in top}
    assert "camping" in cats and cats <= {"camping", "hiking", "fishing", "travel accessories"}
    rebid = q.model_copy(update={"candidates": [c.model_copy(update={"bid": 101 - c.bid}) for c in q.candidates]})
    assert [c.ad_id for c in top_k_candidates(rebid, 3, text_encoder)] == [c.ad_id for c in top]


def test_k_at_least_the_candidates_returns_all_in_catalog_order(text_encoder):
    q = query("Anything for my cat?", ["cats"])
    assert top_k_candidates(q, 100, text_encoder) == list(q.candidates)
    assert top_k_candidates(q, 500, text_encoder) == list(q.candidates)
    with pytest.raises(ValueError):
        top_k_candidates(q, 0, text_encoder)


def test_selector_is_a_callable_for_the_backends(text_encoder):
    sel = RetrievalSelector(text_encoder, 2)
    q = query("Best food for an older cat?", ["cats"])
    picked = sel(q)
    assert len(picked) == 2 and picked[0].category == "pet food"
