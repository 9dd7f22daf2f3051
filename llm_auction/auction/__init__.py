"""The mechanism of LLM-Auction: pure functions, no I/O, no framework.

``parse_ads`` finds ad markers in an answer, ``validate`` turns them into an ``Allocation``
(exposed ads, count, format error), ``reward`` scores it (Eq. 8) and ``payments`` bills clicks at
first price (Eq. 7). Nothing here imports the rest of the package (import-linter checks it).
"""

from .allocation import Allocation, CatalogAd, allocate, validate
from .markers import AdMention, parse_ads
from .payment import payments, revenue_per_query, reward_per_query
from .reward import AD_COUNT_PENALTY, FORMAT_ERROR_PENALTY, expected_revenue, reward, user_experience_penalty

__all__ = [
    "AdMention", "Allocation", "CatalogAd", "allocate", "parse_ads", "validate",
    "payments", "revenue_per_query", "reward_per_query",
    "AD_COUNT_PENALTY", "FORMAT_ERROR_PENALTY", "expected_revenue", "reward", "user_experience_penalty",
]
