"""Which policy version answers a user: a stable version, one candidate, the candidate's share.

``version_for(user_id)`` is the candidate iff ``stable_hash(salt, user_id) mod 10_000 <
round(share * 10_000)``, else the stable version. The hash does not depend on the process or the
run (``schemas.ids.stable_hash``), so every responder replica sends a user to the same arm, a
user sees one version for the whole rollout, and raising the share only adds users to the
candidate arm (the buckets below the old share stay below the new one). The salt is per rollout
(the candidate's name by default), so the users of one canary are not the same users as the last.

A router changes only through :meth:`apply` (a ``RolloutEvent``) or :meth:`set`; the responder
calls them between batches, so one batch is routed by one state.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_auction.schemas import RolloutEvent
from llm_auction.schemas.ids import stable_hash

BUCKETS = 10_000


@dataclass(frozen=True)
class Routing:
    """One routing state: the versions and the candidate's share of the buckets."""

    stable: str
    candidate: str | None = None
    share: float = 0.0
    salt: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {self.share}")
        if self.share > 0 and not self.candidate:
            raise ValueError("a positive share needs a candidate version")

    @property
    def threshold(self) -> int:
        """Buckets (of 10,000) that go to the candidate."""
        return round(self.share * BUCKETS) if self.candidate else 0

    def serving(self) -> set[str]:
        """The versions this state can route to (what must be loaded before it applies)."""
        return {self.stable} | ({self.candidate} if self.threshold > 0 else set())


def bucket(salt: str, user_id: str) -> int:
    """The user's bucket in ``[0, 10_000)`` for a rollout salted with ``salt``."""
    return stable_hash(salt, user_id) % BUCKETS


class PolicyRouter:
    """The responder's routing state: ``version_for(user_id)`` per query."""

    def __init__(self, stable: str, candidate: str | None = None, share: float = 0.0, salt: str = ""):
        self.state = Routing(stable, candidate, share, salt or (candidate or ""))

    @property
    def stable(self) -> str:
        return self.state.stable

    @property
    def version(self) -> str:
        """The stable version (what a user outside the canary gets)."""
        return self.state.stable

    def set(self, stable: str, candidate: str | None = None, share: float = 0.0, salt: str = "") -> None:
        self.state = Routing(stable, candidate, share, salt or (candidate or ""))

    @staticmethod
    def routing_of(event: RolloutEvent) -> Routing:
        """The routing a rollout event decides: only ``canary`` and ``paused`` give the candidate a
        share; ``promoted``, ``rolled_back`` and ``inconclusive`` send everyone to the stable version."""
        share = event.candidate_share if event.state in ("canary", "paused") else 0.0
        return Routing(event.stable_version, event.candidate_version if share > 0 else None, share, event.routing_salt)

    def apply(self, event: RolloutEvent) -> None:
        self.state = self.routing_of(event)

    def version_for(self, user_id: str) -> str:
        st = self.state
        if st.threshold and bucket(st.salt, user_id) < st.threshold:
            return st.candidate  # type: ignore[return-value]
        return st.stable

    def versions_for(self, user_ids) -> list[str]:
        return [self.version_for(u) for u in user_ids]


__all__ = ["BUCKETS", "PolicyRouter", "Routing", "bucket"]
