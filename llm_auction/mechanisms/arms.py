"""Rollout arms that are mechanisms: how a responder serves an arm name.

An arm (what the router picks per user, what a rollout event names) is either a **policy
version** (``base``, ``policy-0003``), answered with one sample and batched with the other plain
versions of the batch in one generation call, or a **mechanism name** (``pretrained``,
``policy:<version>``, ``mosaic[:N]``, ``slot``: :func:`.factory.make_mechanism`), answered by
that mechanism. So a canary can put MOSAIC-20 against LLM-Auction on live traffic, each arm's
responses carrying their own cost and prices, and the evaluation serves every mechanism through
the same responder by routing all traffic to one arm at a time.
"""

from __future__ import annotations

from .base import Mechanism, ScoreFn, TokenCounter, token_counter_or_unknown
from .factory import make_mechanism

MECHANISM_KINDS = ("pretrained", "policy", "mosaic", "slot")


def is_mechanism(arm: str) -> bool:
    """Whether ``arm`` names a mechanism (``kind`` or ``kind:arg`` of :data:`MECHANISM_KINDS`), not a plain policy version."""
    kind, sep, arg = arm.partition(":")
    if kind == "policy":
        return bool(sep and arg)
    return kind in MECHANISM_KINDS


def arm_versions(arm: str, base_version: str = "base") -> set[str]:
    """The policy versions the backend must have loaded to serve ``arm``."""
    if not is_mechanism(arm):
        return {arm}
    kind, _, arg = arm.partition(":")
    return {arg} if kind == "policy" else {base_version}


class Arms:
    """Arm name -> the :class:`~.base.Mechanism` that serves it (built once), or None for a plain version.

    ``score`` is the served pCTR (answer-level), which ``mosaic`` selects with and ``slot`` ranks
    with; an arm that needs it when none was given is refused with ``ValueError`` when first served.
    """

    def __init__(self, backend, *, score: ScoreFn | None = None, base_version: str = "base", lam: float = 1.0, seed: int = 0,
                 count_tokens: TokenCounter | None = None):
        self.backend, self.score, self.base_version, self.lam, self.seed = backend, score, base_version, lam, seed
        self.count_tokens = count_tokens or token_counter_or_unknown(backend)  # 0 where the backend has no tokenizer
        self._built: dict[str, Mechanism] = {}

    def problem(self, arm: str) -> str | None:
        """Why ``arm`` cannot be served (a mechanism that cannot be built), or None."""
        try:
            self.mechanism(arm)
        except ValueError as e:
            return str(e)
        return None

    def mechanism(self, arm: str) -> Mechanism | None:
        if not is_mechanism(arm):
            return None
        if arm not in self._built:
            self._built[arm] = make_mechanism(arm, backend=self.backend, score=self.score, base_version=self.base_version, lam=self.lam,
                                              seed=self.seed, count_tokens=self.count_tokens)
        return self._built[arm]


__all__ = ["MECHANISM_KINDS", "Arms", "arm_versions", "is_mechanism"]
