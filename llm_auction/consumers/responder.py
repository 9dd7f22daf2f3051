"""The responder: queries in, Ad-LLM answers out, each with the allocation the mechanism reads.

For every query it picks the candidates to show (all, or the top K by relevance when a CPU model
cannot take 100 ads in its prompt), asks the Ad-LLM backend for one answer per query in a batch,
validates the answer's markers against the shown candidates (``llm_auction.auction``), and emits a
``ResponseEvent`` tagged with the arm that wrote it. The arm is chosen per query by the router
(``routing.PolicyRouter``: stable hash of the user id into the rollout's shares), so one batch may
mix arms. An arm is a policy version (the plain versions of a batch share one generation call) or
a mechanism name (``mosaic:20``, ``slot``, ``policy:<v>``: ``llm_auction.mechanisms.arms``), whose
queries the mechanism answers; every response carries its cost (generations, generated tokens,
seconds) and, when the mechanism does not charge the bid, its per-click prices; the control follower (``control.ControlFollower``), when given, loads
announced versions and applies rollouts before each batch. A query naming an ad the catalog
does not have, or with a title that differs from the catalog's, is rejected to the dead-letter
topic: the mechanism's exact-title rule needs the catalog to be the truth.

Event time: a response carries its query's ``ts`` and an id derived from the query's, so the
query, its answer and its clicks share one event time and a redelivered query never counts
twice. Processing delay is in ``latency_ms`` (generation) and in the Kafka record timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from operator import attrgetter

from llm_auction.auction import allocate
from llm_auction.mechanisms import Arms, Cost, Outcome as MechanismOutcome
from llm_auction.mechanisms.base import first_price
from llm_auction.schemas import Ad, CandidateAd, Candidates, QueryEvent, ResponseEvent
from llm_auction.schemas.candidates import catalog_ads
from llm_auction.schemas.ids import DerivedIds
from llm_auction.schemas.topics import RESPONSES

from .routing import PolicyRouter
from .service import Item, Outcome, Output

_ID_TITLE = attrgetter("ad_id", "title")
CandidatePicker = Callable[[QueryEvent], list[CandidateAd]]
_RESPONSE_IDS = DerivedIds("2b0c8a52-3f43-4a57-8f1e-8d3c5a9e6b20")


def response_event_id(query_event_id: str, policy_version: str) -> str:
    """Deterministic id of the answer to a query under a policy version.

    With the query's event time as the response's ``ts``, a query answered twice (a responder
    crash between produce and commit) gives two events with one identity, which the warehouse
    keeps once, instead of two answers that would both count.
    """
    return _RESPONSE_IDS(f"{query_event_id}/{policy_version}")


class ResponderHandler:
    def __init__(self, backend, catalog: Sequence[Ad], policy: PolicyRouter, pick: CandidatePicker | None = None, control=None,
                 arms: Arms | None = None):
        self.backend = backend
        self.arms = arms or Arms(backend)
        self.titles = {a.ad_id: a.title for a in catalog}
        self.pairs = frozenset(self.titles.items())
        # Candidates that are catalog ads as is (schemas.Candidates.catalog_only) carry the package
        # catalog's titles by construction: when this responder checks against that same catalog,
        # they need no check of their own (the check is a visible share of the responder's CPU:
        # docs/benchmarks.md#figures-behind-defaults-and-code-choices).
        self.trusts_package_catalog = self.titles == {a.ad_id: a.title for a in catalog_ads().values()}
        self.policy = policy
        self.pick = pick
        self.control = control  # anything with apply_pending(): run between batches, in this thread

    def _check(self, q: QueryEvent) -> str | None:
        if q.candidates.catalog_only and self.trusts_package_catalog:
            return None
        # Otherwise one C-level pass over (id, title) pairs; a miss is explained below.
        if self.pairs.issuperset(map(_ID_TITLE, q.candidates)):
            return None
        for c in q.candidates:
            title = self.titles.get(c.ad_id)
            if title is None:
                return f"candidates: unknown ad id {c.ad_id} (not in the catalog)"
            if title != c.title:
                return f"candidates: title of {c.ad_id} differs from the catalog ({c.title!r} != {title!r})"
        return None

    def handle(self, items: Sequence[Item]) -> Outcome:
        if self.control is not None:
            self.control.apply_pending()  # loads and routing changes land between batches, never inside one
        out = Outcome()
        good: list[Item] = []
        for it in items:
            problem = self._check(it.event)
            if problem:
                out.rejected.append((it, problem))
            else:
                good.append(it)
        if not good:
            return out
        queries: list[QueryEvent] = [it.event for it in good]
        if self.pick:
            shown = [Candidates.of(self.pick(q)) for q in queries]
            prompts = [q.model_copy(update={"candidates": s}) for q, s in zip(queries, shown)]
        else:
            shown, prompts = [q.candidates for q in queries], queries
        arms = [self.policy.version_for(q.user.user_id) for q in queries]
        t0 = time.perf_counter()
        results = self._answer(prompts, arms)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        for q, s, arm, r in zip(queries, shown, arms, results):
            alloc = r.allocation
            bids = q.bids()
            prices = r.prices if any(p != bids[a] for a, p in r.prices.items()) else {}  # first price travels as no prices
            resp = ResponseEvent.for_query(
                q,
                event_id=response_event_id(q.event_id, arm),
                ts=q.ts,
                policy_version=arm, text=r.answer,
                exposed_ad_ids=alloc.exposed, n_ads=alloc.n_ads, format_error=alloc.format_error,
                format_reasons=list(alloc.reasons), latency_ms=latency_ms,
                shown_ad_ids=" ".join(s.ad_ids),  # the wire's line: a repeated list is checked once, not id by id
                generations=r.cost.generations, generated_tokens=r.cost.generated_tokens, generation_s=r.cost.seconds,
                prices=[prices[a] for a in alloc.exposed] if prices else [],
            )
            out.outputs.append(Output(RESPONSES, q.query_id, resp))
        return out

    def _answer(self, prompts: list[QueryEvent], arms: list[str]) -> list[MechanismOutcome]:
        """One outcome per prompt: the plain versions' prompts in one generation call, each
        mechanism arm's prompts through its mechanism."""
        results: list[MechanismOutcome | None] = [None] * len(prompts)
        plain = [i for i, a in enumerate(arms) if self.arms.mechanism(a) is None]
        if plain:
            t0 = time.perf_counter()
            texts = self.backend.generate([prompts[i] for i in plain], [arms[i] for i in plain], n=1)
            seconds = (time.perf_counter() - t0) / len(plain)
            for i, samples in zip(plain, texts):
                q, text = prompts[i], samples[0]
                alloc = allocate(text, q.candidates)
                results[i] = MechanismOutcome(q.query_id, text, alloc, first_price(alloc, q), Cost(1, self.arms.count_tokens(text), seconds))
        for arm in dict.fromkeys(a for a in arms if self.arms.mechanism(a) is not None):
            idx = [i for i, a in enumerate(arms) if a == arm]
            for i, r in zip(idx, self.arms.mechanism(arm).run([prompts[i] for i in idx])):
                results[i] = r
        return results  # type: ignore[return-value]
