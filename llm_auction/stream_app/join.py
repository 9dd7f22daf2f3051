"""Joining responses and clicks into labeled impressions, one row per exposed ad.

Responses and clicks travel on different topics but share the key (``query_id``) and partition
count, so one worker sees both halves of a query. Either half may arrive first. A response waits
in ``pending`` until every exposed ad has a decision, or until ``max_wait_s`` passes, after which
an ad without a click event is labeled not clicked (a real click stream only reports clicks; the
simulator reports every decision, which simply completes the join early). Clicks that arrive
before their response wait in ``early_clicks`` (for ``early_ttl_s``, default ten times
``max_wait_s``, then :meth:`ImpressionJoiner.expire` drops them); clicks on ads the response did
not expose are dropped (they are not billable and not impressions). A click's
``click_probability`` (the simulator's truth, when it reports one) travels to the impression, for
the oracle metrics of the pCTR model.

State lives in two mappings passed in, so the same logic runs over plain dicts in tests and over
Faust tables (changelog-backed, restored on restart) in the stream app. Values are plain JSON.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import asdict, dataclass

from llm_auction.schemas import ClickEvent, ResponseEvent


@dataclass(frozen=True)
class Impression:
    """One labeled impression: the row of ``stream_impressions`` (``store.IMPRESSIONS_SCHEMA`` is derived from these fields)."""

    query_id: str
    ts: float
    policy_version: str
    user_id: str
    query: str
    text: str
    ad_id: str
    bid: int
    clicked: bool
    click_probability: float | None = None  # the simulator's true probability, when known

    def to_dict(self) -> dict:
        return asdict(self)


def response_state(resp: ResponseEvent, now: float) -> dict:
    """What the join keeps of a response: who asked what, the answer, and the exposed ads with their bids."""
    return {
        "ts": resp.ts.timestamp(),
        "arrived": now,
        "policy_version": resp.policy_version,
        "user_id": resp.user.user_id,
        "query": resp.query,
        "text": resp.text,
        "exposed": resp.bids(),
        "decisions": {},
        "truth": {},
    }


class ImpressionJoiner:
    def __init__(self, pending: MutableMapping, early_clicks: MutableMapping, max_wait_s: float = 30.0, early_ttl_s: float | None = None):
        self.pending = pending
        self.early_clicks = early_clicks
        self.max_wait_s = max_wait_s
        self.early_ttl_s = 10.0 * max_wait_s if early_ttl_s is None else early_ttl_s

    def _complete(self, query_id: str, state: dict, missing_unclicked: bool) -> list[Impression]:
        out = []
        for ad_id, bid in state["exposed"].items():
            clicked = state["decisions"].get(ad_id)
            if clicked is None and not missing_unclicked:
                return []
            p = (state.get("truth") or {}).get(ad_id)
            out.append(Impression(query_id, state["ts"], state["policy_version"], state["user_id"], state["query"], state["text"], ad_id, int(bid), bool(clicked), p))
        del self.pending[query_id]
        return out

    def add_response(self, resp: ResponseEvent, now: float) -> list[Impression]:
        if not resp.exposed_ad_ids or resp.query_id in self.pending:
            return []  # nothing exposed, or a redelivered response already waiting
        state = response_state(resp, now)
        early = self.early_clicks.pop(resp.query_id, None) or {}
        state["decisions"] = {a: c for a, c in (early.get("decisions") or {}).items() if a in state["exposed"]}
        state["truth"] = {a: p for a, p in (early.get("truth") or {}).items() if a in state["exposed"]}
        self.pending[resp.query_id] = state
        if len(state["decisions"]) == len(state["exposed"]):
            return self._complete(resp.query_id, state, missing_unclicked=False)
        return []

    def add_click(self, click: ClickEvent, now: float) -> list[Impression]:
        state = self.pending.get(click.query_id)
        if state is None:
            early = self.early_clicks.get(click.query_id) or {"arrived": now, "decisions": {}, "truth": {}}
            decisions = dict(early["decisions"])
            decisions[click.ad_id] = decisions.get(click.ad_id, False) or click.clicked
            truth = dict(early["truth"])
            if click.click_probability is not None:
                truth[click.ad_id] = click.click_probability
            self.early_clicks[click.query_id] = {"arrived": early["arrived"], "decisions": decisions, "truth": truth}
            return []
        if click.ad_id not in state["exposed"]:
            return []
        state = dict(state)
        state["decisions"] = {**state["decisions"], click.ad_id: state["decisions"].get(click.ad_id, False) or click.clicked}
        if click.click_probability is not None:
            state["truth"] = {**(state.get("truth") or {}), click.ad_id: click.click_probability}
        self.pending[click.query_id] = state  # reassign: Faust tables persist on __setitem__
        if len(state["decisions"]) == len(state["exposed"]):
            return self._complete(click.query_id, state, missing_unclicked=False)
        return []

    def expire(self, now: float) -> list[Impression]:
        """Close responses that waited ``max_wait_s``; drop early clicks that never met a response."""
        out: list[Impression] = []
        for qid in [q for q, s in list(self.pending.items()) if now - s["arrived"] >= self.max_wait_s]:
            out += self._complete(qid, self.pending[qid], missing_unclicked=True)
        for qid in [q for q, e in list(self.early_clicks.items()) if now - e["arrived"] >= self.early_ttl_s]:
            del self.early_clicks[qid]
        return out
