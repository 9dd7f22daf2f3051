"""First-price-per-click payments (paper Eq. 7) and the batch metrics of the paper's Table 2."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .allocation import Allocation


def payments(allocation: Allocation, bids: Mapping[str, float], clicks: Mapping[str, bool] | Iterable[str]) -> dict[str, float]:
    """What each exposed advertiser pays: its bid if its ad was clicked, else 0.

    ``clicks`` is ad id -> clicked, or the ids that were clicked. A click on an ad that was not
    exposed (a changed title, an unknown id) is not billable and does not appear.
    """
    clicked = {a for a, c in clicks.items() if c} if isinstance(clicks, Mapping) else set(clicks)
    return {a: float(bids[a]) if a in clicked else 0.0 for a in allocation.exposed}


def revenue_per_query(query_payments: Iterable[Mapping[str, float]]) -> float:
    """Mean over queries of the sum of payments (sum_i b_i * c_i)."""
    totals = [sum(p.values()) for p in query_payments]
    if not totals:
        raise ValueError("revenue_per_query: empty batch")
    return sum(totals) / len(totals)


def reward_per_query(rewards: Iterable[float]) -> float:
    """Mean reward R over queries."""
    values = list(rewards)
    if not values:
        raise ValueError("reward_per_query: empty batch")
    return sum(values) / len(values)
