"""From the markers in an answer to the allocation the mechanism recognizes.

An ad is *exposed* iff a well-formed marker names one of the query's candidate ids with that
ad's exact catalog title. Every other mention is a format error: a malformed marker, an id that
is not a candidate, or a changed title. A mention with a changed title is not an exposure either
(the user never saw the advertiser's ad as bought). Repeats of an exposed ad count once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter, indexOf
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


_MISSING = object()
_AD_ID = attrgetter("ad_id")


class _Titles:
    """The candidates' id -> title, looked up only for the ids an answer names.

    ``allocate`` runs once per response on ~100 candidates, and an answer names 0-3 ads: building
    the whole id -> title dict up front cost as much as parsing the answer. So nothing is built
    until a well-formed marker needs a title; the first few ids are found by a C-level scan from
    the end (the last candidate with an id wins, as it would in a dict built from them), and only
    an answer naming more ads than that pays for the dict, which keeps the worst case bounded.

    A sequence that also carries its ids as a tuple ``ad_ids`` (``schemas.Candidates``, ids
    unique) is searched on that tuple: no candidate object is touched but the one named.
    """

    _SCANS = 2  # lookups by scanning before building the dict

    def __init__(self, candidates: Iterable[CatalogAd] | Mapping[str, str]):
        self._by_id: Mapping[str, str] | None = candidates if isinstance(candidates, Mapping) else None
        self._cands = candidates
        self._ids = getattr(candidates, "ad_ids", None) if self._by_id is None else None
        self._scans = 0

    def get(self, ad_id: str):
        """The title of candidate ``ad_id``, or ``_MISSING`` when it is not a candidate."""
        if type(self._ids) is tuple:
            try:
                return self._cands[self._ids.index(ad_id)].title
            except ValueError:
                return _MISSING
        if self._by_id is None:
            if not isinstance(self._cands, (list, tuple)):
                self._cands = tuple(self._cands)  # a one-shot iterable: read it once
            if self._scans < self._SCANS:
                self._scans += 1
                try:
                    i = indexOf(map(_AD_ID, reversed(self._cands)), ad_id)
                except ValueError:
                    return _MISSING
                return self._cands[-1 - i].title
            self._by_id = {c.ad_id: c.title for c in self._cands}
        return self._by_id[ad_id] if ad_id in self._by_id else _MISSING


def validate(mentions: Iterable[AdMention], candidates: Iterable[CatalogAd] | Mapping[str, str]) -> Allocation:
    """Check each mention against the candidates (objects with ``ad_id``/``title``, or id->title)."""
    titles = _Titles(candidates)
    exposed: list[str] = []
    reasons: list[str] = []
    for m in mentions:
        if not m.well_formed:
            reasons.append(f"malformed marker at {m.start}: {m.raw!r}")
            continue
        title = titles.get(m.ad_id)
        if title is _MISSING:
            reasons.append(f"unknown ad id {m.ad_id} at {m.start}")
        elif m.title is None or m.title.strip() != title:
            reasons.append(f"title of {m.ad_id} changed at {m.start}: {m.title!r} != {title!r}")
        elif m.ad_id not in exposed:
            exposed.append(m.ad_id)
    return Allocation(tuple(exposed), bool(reasons), tuple(reasons))


def allocate(text: str, candidates: Iterable[CatalogAd] | Mapping[str, str]) -> Allocation:
    """``validate(parse_ads(text), candidates)``: the allocation of an answer in one call."""
    return validate(parse_ads(text), candidates)
