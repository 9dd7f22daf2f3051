"""What every user simulator promises, and the one way click events are built from decisions.

The simulator is the environment's ground truth: the Ad-LLM is rewarded, and the pCTR model
trained, on what it says. So the contract is strict: exactly one ``ClickEvent`` per exposed ad,
in ``response.exposed_ad_ids`` order (a non-click is data too: pCTR trains on exposures), none
for an answer with no exposed ads, and ``bid``/``policy_version``/``user_id`` copied from the
response so revenue and attribution can be read from the clicks table alone.

Click events are fully derived from the response: the id (uuid5 of the response's event id and
the ad id) and the event time (the response's ``ts``). A response consumed twice (at-least-once
delivery) therefore yields byte-identical clicks, which the warehouse dedups on (ts, event_id).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from llm_auction.schemas import ClickEvent, ResponseEvent
from llm_auction.schemas.ids import DerivedIds

_CLICK_IDS = DerivedIds("6f1d5c1e-4b7a-4f0e-9a51-2c3c0c7d1a11")


@dataclass(frozen=True)
class Decision:
    """One user decision on one exposed ad; ``probability`` is None when the backend cannot know it."""

    clicked: bool
    reason: str
    probability: float | None = None


@runtime_checkable
class UserSimulator(Protocol):
    """A simulated user: reads an ad-integrated answer and decides, per exposed ad, to click or not."""

    def clicks(self, response: ResponseEvent) -> list[ClickEvent]: ...

    def clicks_batch(self, responses: Sequence[ResponseEvent]) -> list[list[ClickEvent]]: ...


def click_event_id(response_event_id: str, ad_id: str) -> str:
    """Deterministic id of the click event for (response, ad): replays dedup downstream."""
    return _CLICK_IDS(f"{response_event_id}/{ad_id}")


def build_click_events(response: ResponseEvent, decisions: Mapping[str, Decision]) -> list[ClickEvent]:
    """One ClickEvent per exposed ad, in exposure order; an ad without a decision is not clicked."""
    bids = response.bids()
    prices = dict(zip(response.exposed_ad_ids, response.prices))  # empty: first price, the click carries no price
    events = []
    for ad_id in response.exposed_ad_ids:
        d = decisions.get(ad_id) or Decision(False, "no decision for this ad")
        events.append(
            ClickEvent(
                event_id=click_event_id(response.event_id, ad_id),
                ts=response.ts,
                query_id=response.query_id,
                ad_id=ad_id,
                clicked=bool(d.clicked),
                reason=d.reason[:500],
                policy_version=response.policy_version,
                user_id=response.user.user_id,
                bid=bids[ad_id],
                price=prices.get(ad_id),
                click_probability=None if d.probability is None else min(1.0, max(0.0, float(d.probability))),
            )
        )
    return events
