"""The mechanism protocol: queries in; per query an answer, its allocation, prices and cost.

Every mechanism answers the same question the same way, so the evaluation, the responder and a
rollout arm can treat them alike: :class:`Outcome` holds the answer (what the user sees), its
:class:`~llm_auction.auction.Allocation` read from the answer by the one validator, the price per
click of each exposed ad (first price for the LLM-native mechanisms: the bid), and the
:class:`Cost` of producing it.

Cost is counted, not estimated: ``generations`` is the number of answers the mechanism had the
model write for this query (one for a policy, N for best-of-N), ``generated_tokens`` their
tokens by the model's tokenizer, ``seconds`` the wall time of the generation calls, shared evenly
by the queries of one batch (a batch is one call).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from llm_auction.auction import Allocation
from llm_auction.schemas import QueryEvent

# pCTR of the exposed ads of many answers: [(query, answer text, exposed ad ids)] -> [{ad id: p}]
ScoreFn = Callable[[Sequence[tuple[QueryEvent, str, Sequence[str]]]], list[dict[str, float]]]
TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Cost:
    """What producing one query's answer cost."""

    generations: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """One query's result under a mechanism."""

    query_id: str
    answer: str
    allocation: Allocation
    prices: Mapping[str, float]  # per-click price of each exposed ad
    cost: Cost
    detail: Mapping[str, Any] = field(default_factory=dict)  # mechanism-specific: the chosen sample, the slot's winner...


@runtime_checkable
class Mechanism(Protocol):
    """An allocation rule with a cost."""

    name: str

    def run(self, queries: Sequence[QueryEvent]) -> list[Outcome]:
        """One :class:`Outcome` per query, in order; each query's candidates are the ones it may show."""
        ...


def first_price(allocation: Allocation, query: QueryEvent) -> dict[str, float]:
    """Eq. 7: an exposed ad pays its bid per click."""
    bids = query.bids()
    return {ad: float(bids[ad]) for ad in allocation.exposed}


def generate_timed(backend, queries: Sequence[QueryEvent], version: str, n: int) -> tuple[list[list[str]], float]:
    """``n`` answers per query in one ``generate`` call (checked), and the call's seconds per query."""
    t0 = time.perf_counter()
    answers = backend.generate(list(queries), version, n=n)
    if len(answers) != len(queries) or any(len(a) != n for a in answers):
        raise RuntimeError(f"backend returned {[len(a) for a in answers]} answers for {len(queries)} queries x {n}")
    return answers, (time.perf_counter() - t0) / max(1, len(queries))


def token_counter(backend) -> TokenCounter:
    """Tokens of a text by the backend's tokenizer (``backend.tokenizer``: the transformers and the
    vLLM backends have one); without it, a clear error, never a guess."""
    tok = getattr(backend, "tokenizer", None)
    if tok is None:
        raise TypeError(f"{type(backend).__name__} exposes no tokenizer: pass count_tokens to the mechanism")
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def token_counter_or_unknown(backend) -> TokenCounter:
    """:func:`token_counter` where the backend has a tokenizer, else a counter of 0 (unknown): for a
    responder, whose stored-answer backend in tests has none, where a missing count must not stop
    serving; the evaluation uses :func:`token_counter`, which refuses."""
    try:
        return token_counter(backend)
    except TypeError:
        return lambda text: 0


__all__ = ["Cost", "Mechanism", "Outcome", "ScoreFn", "TokenCounter", "first_price", "generate_timed", "token_counter", "token_counter_or_unknown"]
