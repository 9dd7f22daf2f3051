"""Event models: the one definition of what travels on every topic.

Every event carries ``event_id`` (a uuid, the deduplication key downstream), ``schema_version``
and ``ts``. Responses and clicks carry ``policy_version`` so that revenue can be attributed to
the policy that earned it. Models are frozen: an event, once built, is a fact.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from collections.abc import Iterable, Sequence
from functools import lru_cache
from operator import attrgetter, itemgetter
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_serializer, field_validator, model_validator

_AD_ID = attrgetter("ad_id")
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)
_INT = {int}

SCHEMA_VERSION = 3  # 2: responses carry their exposed ads, not the whole query; 3: catalog ads travel as [ad_id, bid]

AdId = Annotated[str, StringConstraints(pattern=r"^Ad-\d{4}$")]
Bid = Annotated[int, Field(ge=1, le=100)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _uuid() -> str:
    return str(uuid.uuid4())


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Ad(_Model):
    """A catalog ad: the title is the exact string an answer must reproduce inside a marker."""

    ad_id: AdId
    title: NonEmpty
    category: NonEmpty


class CandidateAd(Ad):
    """An ad offered to one query, with the advertiser's bid for it (integers 1..100)."""

    bid: Bid


class UserProfile(_Model):
    user_id: NonEmpty
    info: NonEmpty
    interests: list[NonEmpty] = Field(min_length=1, max_length=10)


class Event(_Model):
    """Base of every event on the wire."""

    event_id: str = Field(default_factory=_uuid)
    schema_version: int = SCHEMA_VERSION
    ts: datetime = Field(default_factory=_now)

    @field_validator("ts")
    @classmethod
    def _aware_utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v.astimezone(timezone.utc)


class QueryEvent(Event):
    """A user question with the candidate ads and their bids for this query.

    On the wire a candidate that is a catalog ad (``llm_auction/data/ads.jsonl``: same id, title
    and category) travels as ``[ad_id, bid]``, and decoding restores it from the catalog; any
    other candidate travels whole. A query's 100 candidates were ~10 KB of JSON, paid for per
    byte by the Kafka clients and the broker at every hop that reads queries (responder and
    sink); the compact form is ~1.9 KB, and the loop's throughput rose by about half
    (bench/pipeline.py, README). The catalog is also what the responder checks titles against,
    so this adds no new source of truth; a compact id the local catalog lacks, or a bid outside
    1..100, is a schema error like any other.
    """

    query_id: NonEmpty
    user: UserProfile
    query: NonEmpty
    candidates: list[CandidateAd] = Field(min_length=1)
    split: Literal["train", "test", "live"] = "live"

    @field_validator("candidates", mode="wrap")
    @classmethod
    def _from_catalog(cls, v: Any, handler: Any) -> Any:
        if type(v) is list:
            # Fast path in C-level passes (every hop that reads queries runs this): every entry is
            # an [ad_id, bid] pair seen before, so the result is catalog candidates already
            # validated and nothing is left for pydantic to check. The type pass: a JSON true
            # hashes like 1.
            try:
                if v and set(map(type, map(_SECOND, v))) == _INT:
                    out = list(map(_compact_cache().get, map(tuple, v)))
                    if all(out):  # not `None not in out`: that calls pydantic's __eq__ per candidate (0.1 ms a query)
                        _no_duplicates(map(_FIRST, v), len(v))  # on the fresh pairs, not the (cold) cached models
                        return out
            except (TypeError, IndexError, KeyError):  # whole candidates, short or unhashable entries
                pass
            v = [_catalog_candidate(e, i) if type(e) is list else e for i, e in enumerate(v)]
        out = handler(v)
        _no_duplicates(map(_AD_ID, out), len(out))
        return out

    @field_serializer("candidates", when_used="json")
    def _to_compact(self, candidates: list[CandidateAd]) -> list:
        ads = _catalog_ads()
        out: list = []
        for c in candidates:
            a = ads.get(c.ad_id)
            out.append([c.ad_id, c.bid] if a is not None and a.title == c.title and a.category == c.category else c.model_dump())
        return out

    def bids(self) -> dict[str, int]:
        return {c.ad_id: c.bid for c in self.candidates}

    def candidate(self, ad_id: str) -> CandidateAd | None:
        for c in self.candidates:
            if c.ad_id == ad_id:
                return c
        return None


def _no_duplicates(ad_ids: Iterable[str], n: int) -> None:
    """A query offers each ad once (one C-level pass: every hop that reads queries runs this)."""
    if len(set(ad_ids)) != n:
        raise ValueError("duplicate ad_id")


@lru_cache(maxsize=1)
def _catalog_ads() -> dict[str, Ad]:
    from .catalog import load_catalog  # at call time: the catalog module builds on this one

    return {a.ad_id: a for a in load_catalog()}


@lru_cache(maxsize=1)
def _compact_cache() -> dict[tuple[str, int], CandidateAd]:
    """(ad_id, bid) -> the catalog candidate, filled as pairs are seen (at most 100 x 100, frozen and shared)."""
    return {}


def _catalog_candidate(e: list, i: int) -> CandidateAd:
    """Validate one compact candidate ``[ad_id, bid]`` and restore it from the catalog."""
    try:
        if type(e[1]) is int and (c := _compact_cache().get((e[0], e[1]))) is not None and len(e) == 2:
            return c
    except (TypeError, IndexError):
        pass
    if len(e) != 2:
        raise ValueError(f"candidates.{i}: a compact candidate is [ad_id, bid], got {len(e)} items")
    ad_id, bid = e
    ad = _catalog_ads().get(ad_id) if isinstance(ad_id, str) else None
    if ad is None:
        raise ValueError(f"candidates.{i}: {ad_id!r} is not a catalog ad id (send the whole candidate for ads outside the catalog)")
    if type(bid) is not int or not 1 <= bid <= 100:
        raise ValueError(f"candidates.{i}: bid must be an integer in 1..100, got {bid!r}")
    c = CandidateAd(ad_id=ad.ad_id, title=ad.title, category=ad.category, bid=bid)
    _compact_cache()[(ad_id, bid)] = c
    return c


class ResponseEvent(Event):
    """The Ad-LLM's answer to one query and the allocation the mechanism read from it.

    A response carries what every downstream hop needs and no more: the question and the
    profile (user simulator, impressions join), the answer, and the exposed ads with their bids
    (clicks, revenue, Eq. 8). The query's full candidate list stays on ``auction.queries``:
    copying 100 candidates into every answer made a response ~11 KB and its decoding the
    largest cost of the user-simulator and sink hops (bench/pipeline.py). ``shown_ad_ids``
    records which candidates the Ad-LLM was offered. Build one from the query it answers with
    :meth:`for_query`.
    """

    query_id: NonEmpty
    policy_version: NonEmpty
    user: UserProfile
    query: NonEmpty
    text: str
    exposed_ads: list[CandidateAd] = Field(default_factory=list)
    n_ads: int = Field(ge=0)
    format_error: bool = False
    format_reasons: list[str] = Field(default_factory=list)
    shown_ad_ids: list[AdId] = Field(default_factory=list)
    latency_ms: float = Field(ge=0.0, default=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> "ResponseEvent":
        if self.n_ads != len(self.exposed_ads):
            raise ValueError("n_ads: must equal the number of exposed_ad_ids")
        return self

    @classmethod
    def for_query(cls, query: QueryEvent, *, exposed_ad_ids: Sequence[str] = (), **fields: Any) -> "ResponseEvent":
        """The response to ``query``: its id, question and profile, and its exposed candidates.

        Raises ``ValueError`` when ``query_id`` is given and differs from the query's, or when an
        exposed id is not among the query's candidates.
        """
        if fields.setdefault("query_id", query.query_id) != query.query_id:
            raise ValueError("query_id: differs from query.query_id")
        ids = list(map(_AD_ID, query.candidates))
        unknown = [a for a in exposed_ad_ids if a not in ids]
        if unknown:
            raise ValueError(f"exposed_ad_ids: not among the candidates: {unknown}")
        exposed = [query.candidates[ids.index(a)] for a in exposed_ad_ids]
        return cls(user=query.user, query=query.query, exposed_ads=exposed, **fields)

    @property
    def exposed_ad_ids(self) -> list[str]:
        """Ids of the exposed ads, in exposure order."""
        return [a.ad_id for a in self.exposed_ads]

    def bids(self) -> dict[str, int]:
        """Bids of the exposed ads (the only ones that can earn: Eq. 7 and 8)."""
        return {a.ad_id: a.bid for a in self.exposed_ads}


class ClickEvent(Event):
    """The user's decision on one exposed ad (one event per exposed ad, clicked or not).

    ``bid`` is copied from the query so that first-price revenue (Eq. 7) can be summed from
    the clicks table alone.
    """

    query_id: NonEmpty
    ad_id: AdId
    clicked: bool
    reason: str = ""
    policy_version: NonEmpty
    user_id: NonEmpty
    bid: Bid
    click_probability: float | None = Field(default=None, ge=0.0, le=1.0)


class PolicyVersion(Event):
    """A published Ad-LLM policy (full weights or an adapter) that responders may serve."""

    version: NonEmpty
    parent: str | None = None
    uri: NonEmpty
    kind: Literal["full", "lora"] = "full"
    base_model: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)


class PctrVersion(Event):
    """A trained pCTR model exported to ONNX, with its evaluation and promotion decision."""

    version: NonEmpty
    parent: str | None = None
    onnx_uri: NonEmpty
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    metrics: dict[str, float] = Field(default_factory=dict)
    promoted: bool = True
    n_train: int = Field(ge=0, default=0)


class RolloutEvent(Event):
    """An operator or trainer decision about which policy version responders serve."""

    action: Literal["promote", "rollback", "pin"]
    policy_version: NonEmpty
    previous_version: str | None = None
    reason: str = ""


class DeadLetter(Event):
    """A message a consumer could not process, kept with the reason so nothing is lost."""

    source_topic: NonEmpty
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    payload: str
    error: NonEmpty
    consumer: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
