"""Candidate retrieval: list only the ads most relevant to a query in the Ad-LLM's prompt.

Every world query carries all 100 catalog ads as candidates (the paper's setting). Listing them
all costs a ~3,000-token prompt, which a CPU model pays on every answer, and a small model
drowns in it. Retrieval keeps the top ``k`` by embedding similarity between the ad ("title
(category)") and the query (the question plus the user's interests), with the same frozen
encoder as the pCTR model. Bids are not looked at: which ads are *shown* to the LLM should not
depend on the price, the allocation (the LLM) decides that.

Deterministic: scores are rounded before ranking and ties keep catalog (candidate) order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm_auction.schemas import CandidateAd, QueryEvent

from .encoder import TextEncoder


def query_text(query: QueryEvent) -> str:
    """What the ads are matched against: the question and the profile's interests."""
    return f"{query.query} Interests: {', '.join(query.user.interests)}."


def ad_text(ad: CandidateAd) -> str:
    return f"{ad.title} ({ad.category})"


def relevance(query: QueryEvent, candidates: Sequence[CandidateAd], encoder: TextEncoder) -> np.ndarray:
    """Cosine similarity of each candidate to the query (the encoder's vectors are unit-norm)."""
    vecs = encoder.encode([query_text(query), *(ad_text(c) for c in candidates)])
    return vecs[1:] @ vecs[0]


def top_k_candidates(query: QueryEvent, k: int, encoder: TextEncoder) -> list[CandidateAd]:
    """The ``k`` most relevant candidates, most relevant first (ties: candidate order).

    ``k >= len(candidates)`` returns every candidate in candidate order, untouched.
    """
    if k < 1:
        raise ValueError(f"top_k_candidates: k must be >= 1, got {k}")
    cands = list(query.candidates)
    if k >= len(cands):
        return cands
    scores = np.round(relevance(query, cands, encoder).astype(np.float64), 6)
    order = sorted(range(len(cands)), key=lambda i: (-scores[i], i))
    return [cands[i] for i in order[:k]]


class RetrievalSelector:
    """A candidate selector for the Ad-LLM backends: ``make_backend(..., select=RetrievalSelector(enc, 10))``."""

    def __init__(self, encoder: TextEncoder, k: int):
        if k < 1:
            raise ValueError(f"RetrievalSelector: k must be >= 1, got {k}")
        self.encoder = encoder
        self.k = k

    def __call__(self, query: QueryEvent) -> list[CandidateAd]:
        return top_k_candidates(query, self.k, self.encoder)


def candidate_picker(k: int | None, encoder: TextEncoder | None = None) -> RetrievalSelector | None:
    """The candidate narrowing the responder applies before prompting, and IRPO's sampler with it.

    ``k`` set: the top ``k`` candidates by relevance (:func:`top_k_candidates`); ``None``: no
    narrowing (every candidate is listed), returned as ``None``. One function for both, so a policy
    is trained on exactly the candidates it is shown when serving.
    """
    if k is None:
        return None
    return RetrievalSelector(encoder, k)  # type: ignore[arg-type]  # an encoder is needed only when k < candidates
