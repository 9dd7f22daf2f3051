"""The pre-generation slot auction: the decoupled design the paper argues against.

Before any text is written, the candidates are ranked by bid x pCTR of (query, profile, ad); the
top one wins the single slot and pays, per click, the generalized second price

    price = min(bid_1, max(reserve, bid_2 x pCTR_2 / pCTR_1))

(the least bid that would still have won; ``reserve`` alone with one candidate). The LLM is then
asked to answer with only the winner as its candidate. The slot is sold before the answer exists,
so it is shown whatever the model writes: when the answer does not expose the winner, the ad is
appended as a sponsored line. The pCTR before generation cannot see the answer (Eq. 3's phi(y)):
each ad is scored in a stand-in answer: the question followed by the ad's marker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from llm_auction.auction import allocate
from llm_auction.schemas import Candidates, QueryEvent

from .base import Cost, Outcome, ScoreFn, TokenCounter, generate_timed, token_counter

PreCtr = Callable[[Sequence[QueryEvent]], list[dict[str, float]]]  # queries -> {ad id: pCTR} over each query's candidates


def pre_generation_ctr(score: ScoreFn) -> PreCtr:
    """pCTR of every candidate before generation, from an answer-level pCTR function: each ad is
    scored in a stand-in answer, the question followed by the ad's marker (the same form for every
    candidate, so the ranking sees query, profile and ad, as a pre-generation auction does)."""

    def ctr(queries: Sequence[QueryEvent]) -> list[dict[str, float]]:
        items = [(q, f"{q.query} @{c.title}@[{c.ad_id}]", [c.ad_id]) for q in queries for c in q.candidates]
        probs = iter(score(items))
        return [{c.ad_id: next(probs)[c.ad_id] for c in q.candidates} for q in queries]

    return ctr


def gsp_price(ranked: Sequence[tuple[str, float, float]], reserve: float = 0.0) -> float:
    """The winner's price per click; ``ranked`` is (ad id, bid, pCTR) by bid x pCTR, highest first."""
    _, b1, q1 = ranked[0]
    if len(ranked) < 2 or q1 <= 0:
        return min(b1, reserve)
    _, b2, q2 = ranked[1]
    return min(b1, max(reserve, b2 * q2 / q1))


def rank(query: QueryEvent, ctr: Mapping[str, float]) -> list[tuple[str, float, float]]:
    """(ad id, bid, pCTR) by bid x pCTR, highest first; ties by the candidate order."""
    bids = query.bids()
    rows = [(ad, float(bids[ad]), float(ctr[ad])) for ad in query.candidates.ad_ids]
    return sorted(rows, key=lambda r: -r[1] * r[2])  # stable: the first candidate wins a tie


class SlotAuction:
    """One slot, sold before generation at the GSP price; the LLM writes around the winner."""

    def __init__(self, backend, version: str, ctr: PreCtr, *, reserve: float = 0.0, name: str = "slot", count_tokens: TokenCounter | None = None):
        if reserve < 0:
            raise ValueError(f"reserve must be >= 0, got {reserve}")
        self.backend, self.version, self.ctr, self.reserve, self.name = backend, version, ctr, reserve, name
        self.count_tokens = count_tokens or token_counter(backend)

    def run(self, queries: Sequence[QueryEvent]) -> list[Outcome]:
        ranked = [rank(q, c) for q, c in zip(queries, self.ctr(queries))]
        winners = [q.model_copy(update={"candidates": Candidates.of([c for c in q.candidates if c.ad_id == r[0][0]])}) for q, r in zip(queries, ranked)]
        answers, seconds = generate_timed(self.backend, winners, self.version, 1)
        out = []
        for q, w, r, (text,) in zip(queries, winners, ranked, answers):
            ad = w.candidates[0]
            shown = text
            if ad.ad_id not in allocate(text, w.candidates).exposed:
                shown = f"{text.rstrip()}\n\nSponsored: @{ad.title}@[{ad.ad_id}]"
            alloc = allocate(shown, w.candidates)
            price = gsp_price(r, self.reserve)
            detail = {"version": self.version, "winner": ad.ad_id, "price": price, "appended": shown != text,
                      "ranking": r}
            out.append(Outcome(q.query_id, shown, alloc, {a: price for a in alloc.exposed}, Cost(1, self.count_tokens(text), seconds), detail))
        return out


__all__ = ["PreCtr", "SlotAuction", "gsp_price", "pre_generation_ctr", "rank"]
