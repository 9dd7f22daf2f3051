"""Mechanisms by name, the one way the evaluation, a responder or a rollout arm builds them.

Names: ``pretrained`` (the base policy, one sample), ``policy:<version>`` (LLM-Auction, a
registered policy version), ``mosaic`` or ``mosaic:<N>`` (best of N of the pretrained policy by
Eq. 8, N = 20 by default), ``slot`` (the pre-generation slot auction). The backend must already
serve the versions named; ``score`` is the served pCTR (answer-level), which MOSAIC selects with
and the slot auction ranks with.
"""

from __future__ import annotations

from .base import Mechanism, ScoreFn, TokenCounter
from .llm import BestOfN, PolicySample
from .slot import SlotAuction, pre_generation_ctr

MOSAIC_N = 20  # the paper's MOSAIC baseline: best of 20 samples


def mechanism_names() -> tuple[str, ...]:
    """The name forms :func:`make_mechanism` accepts."""
    return ("pretrained", "policy:<version>", "mosaic[:N]", "slot")


def make_mechanism(name: str, *, backend, score: ScoreFn | None = None, base_version: str = "base", lam: float = 1.0,
                   seed: int = 0, count_tokens: TokenCounter | None = None) -> Mechanism:
    """The mechanism ``name`` over ``backend`` (module docstring); ``ValueError`` on an unknown name."""
    kind, _, arg = name.partition(":")
    if kind == "pretrained" and not arg:
        return PolicySample(backend, base_version, name="pretrained", count_tokens=count_tokens)
    if kind == "policy" and arg:
        return PolicySample(backend, arg, name=name, count_tokens=count_tokens)
    if kind in ("mosaic", "slot") and score is None:
        raise ValueError(f"mechanism {name!r} needs a pCTR function (score)")
    if kind == "mosaic":
        if arg and not (arg.isdigit() and int(arg) >= 1):
            raise ValueError(f"mechanism {name!r}: N must be a positive integer")
        n = int(arg) if arg else MOSAIC_N
        return BestOfN(backend, base_version, score, n=n, lam=lam, seed=seed, name=f"mosaic:{n}", count_tokens=count_tokens)
    if kind == "slot" and not arg:
        return SlotAuction(backend, base_version, pre_generation_ctr(score), count_tokens=count_tokens)
    raise ValueError(f"unknown mechanism {name!r} (one of {', '.join(mechanism_names())})")


__all__ = ["MOSAIC_N", "make_mechanism", "mechanism_names"]
