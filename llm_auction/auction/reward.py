"""The mechanism's reward (paper Eq. 5/8), the score IRPO ranks sampled answers by.

    R = sum_i b_i * pctr_i * 1{a_i in y} + lambda * (-10 * N_ad(y)^2 - 500 * 1{format error})

The penalty stands in for the user-experience term s_u^resp of the objective: quadratic in the
number of ads (flooding) and a flat cost for a broken insertion.
"""

from __future__ import annotations

from collections.abc import Mapping

from .allocation import Allocation

# The warehouse's reward_per_query columns (migration 0005's views) compute this penalty again,
# in SQL, with lambda = 1: an applied migration is frozen (ddl.migrate checks its checksum), so it
# cannot read these constants. tests/unit/test_reward_payment.py keeps the two equal; changing a
# constant here takes a new migration that redefines those views.
AD_COUNT_PENALTY = 10.0
FORMAT_ERROR_PENALTY = 500.0


def user_experience_penalty(allocation: Allocation) -> float:
    """s_u^resp(y) = -10 * N_ad^2 - 500 * 1{format error} (always <= 0)."""
    return -AD_COUNT_PENALTY * allocation.n_ads**2 - FORMAT_ERROR_PENALTY * float(allocation.format_error)


def expected_revenue(allocation: Allocation, bids: Mapping[str, float], pctr: Mapping[str, float] | float) -> float:
    """sum over exposed ads of bid * pCTR; ``pctr`` is per ad id, or one constant for all."""
    total = 0.0
    for ad_id in allocation.exposed:
        p = float(pctr) if isinstance(pctr, (int, float)) else pctr.get(ad_id)
        if p is None:
            raise KeyError(f"pctr: no value for exposed ad {ad_id}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"pctr: {ad_id} has {p}, outside [0, 1]")
        if ad_id not in bids:
            raise KeyError(f"bids: no bid for exposed ad {ad_id}")
        total += float(bids[ad_id]) * p
    return total


def reward(allocation: Allocation, bids: Mapping[str, float], pctr: Mapping[str, float] | float, lam: float = 1.0) -> float:
    """Eq. 8: expected first-price revenue plus lambda times the user-experience penalty."""
    return expected_revenue(allocation, bids, pctr) + lam * user_experience_penalty(allocation)
