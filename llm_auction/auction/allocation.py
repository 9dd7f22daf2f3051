"""From the markers in an answer to the allocation the mechanism recognizes.

An ad is *exposed* iff a well-formed marker names one of the query's candidate ids with that
ad's exact catalog title. Every other mention is a format error: a malformed marker, an id that
is not a candidate, or a changed title. A mention with a changed title is not an exposure either
(the user never saw the advertiser's ad as bought). Repeats of an exposed ad count once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .markers import AdMention, parse_ads


class CatalogAd(Protocol):
    """What the mechanism needs of a candidate ad (``schemas.CandidateAd`` fits)."""

    @property
    def ad_id(self) -> str: ...

    @property
    def title(self) -> str: ...


@dataclass(frozen=True)
class Allocation:
    """The outcome the mechanism reads from one answer."""

    exposed: tuple[str, ...]
    format_error: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_ads(self) -> int:
        return len(self.exposed)


def _titles(candidates: Iterable[CatalogAd] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(candidates, Mapping):
        return dict(candidates)
    return {c.ad_id: c.title for c in candidates}


def validate(mentions: Iterable[AdMention], candidates: Iterable[CatalogAd] | Mapping[str, str]) -> Allocation:
    """Check each mention against the candidates (objects with ``ad_id``/``title``, or id->title)."""
    titles = _titles(candidates)
    exposed: list[str] = []
    reasons: list[str] = []
    for m in mentions:
        if not m.well_formed:
            reasons.append(f"malformed marker at {m.start}: {m.raw!r}")
        elif m.ad_id not in titles:
            reasons.append(f"unknown ad id {m.ad_id} at {m.start}")
        elif m.title is None or m.title.strip() != titles[m.ad_id]:
            reasons.append(f"title of {m.ad_id} changed at {m.start}: {m.title!r} != {titles[m.ad_id]!r}")
        elif m.ad_id not in exposed:
            exposed.append(m.ad_id)
    return Allocation(tuple(exposed), bool(reasons), tuple(reasons))


def allocate(text: str, candidates: Iterable[CatalogAd] | Mapping[str, str]) -> Allocation:
    """``validate(parse_ads(text), candidates)``: the allocation of an answer in one call."""
    return validate(parse_ads(text), candidates)
