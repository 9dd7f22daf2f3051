"""Event models: the one definition of what travels on every topic.

Every event carries ``event_id`` (a uuid, the deduplication key downstream), ``schema_version``
and ``ts``. Responses and clicks carry ``policy_version`` so that revenue can be attributed to
the policy that earned it. Models are frozen: an event, once built, is a fact.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from .ads import AdId, AdIdList, Ad, Bid, CandidateAd, NonEmpty, _Model
from .candidates import Candidates

__all__ = ["SCHEMA_VERSION", "Ad", "CandidateAd", "Candidates", "UserProfile", "Event", "QueryEvent", "ResponseEvent", "ClickEvent", "PolicyVersion", "PctrVersion", "RolloutEvent", "ArmEvidence", "EpochRequest", "DeadLetter"]

# 2: responses carry their exposed ads, not the whole query; 3: catalog ads travel as [ad_id, bid];
# 4: a query of catalog ads carries its candidates as two columns (schemas/candidates.py), and a
#    response its shown ad ids as one string (schemas/ads.py AdIdList);
# 5: a rollout event states the routing it decides (stable, candidate, share, state) and its evidence;
# 6: a response carries its mechanism's cost (generations, generated tokens, seconds) and per-click
#    prices, a click its price (absent on older events: first price, the bid);
# 7: a rollout may end ``inconclusive`` and its evidence counts users.
SCHEMA_VERSION = 7


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _uuid() -> str:
    return str(uuid.uuid4())


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

    ``candidates`` is a :class:`~llm_auction.schemas.candidates.Candidates`: a read-only sequence
    of ``CandidateAd`` held as two columns (ad ids and bids), because catalog ads need no more.
    Give it a list of models, dicts or ``[ad_id, bid]`` pairs and it is converted and checked (no
    duplicate ids, compact ids must be catalog ads). On the wire a query of catalog ads then carries
    no titles, a fraction of its size with them (docs/benchmarks.md, wire format); the catalog is
    also what the responder checks titles against, so this adds no new source of truth.
    """

    query_id: NonEmpty
    user: UserProfile
    query: NonEmpty
    candidates: Candidates
    split: Literal["train", "validation", "test", "live"] = "live"

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> "QueryEvent":
        """As pydantic's, but new ``candidates`` are converted and checked (the field is always ``Candidates``)."""
        if update and "candidates" in update:
            update = {**update, "candidates": Candidates.of(update["candidates"])}
        return super().model_copy(update=update, deep=deep)

    def bids(self) -> dict[str, int]:
        return self.candidates.bid_map()

    def candidate(self, ad_id: str) -> CandidateAd | None:
        i = self.candidates.position(ad_id)
        return None if i < 0 else self.candidates[i]


class ResponseEvent(Event):
    """The Ad-LLM's answer to one query and the allocation the mechanism read from it.

    A response carries what every downstream hop needs and no more: the question and the
    profile (user simulator, impressions join), the answer, and the exposed ads with their bids
    (clicks, revenue, Eq. 8). The query's full candidate list stays on ``auction.queries``:
    copying 100 candidates into every answer made its decoding the largest cost of the
    user-simulator and sink hops (docs/benchmarks.md, wire format). ``shown_ad_ids``
    records which candidates the Ad-LLM was offered. Build one from the query it answers with
    :meth:`for_query`.

    ``policy_version`` names the arm that answered: a policy version, or a mechanism
    (``mosaic:20``, ``slot``: ``llm_auction.mechanisms``). What the answer cost is counted, not
    estimated: ``generations`` (answers the model wrote for this query: 1 for a policy, N for
    best-of-N), ``generated_tokens`` (theirs, by the model's tokenizer; 0 when unknown) and
    ``generation_s`` (this query's share of its batch's generation seconds; ``latency_ms`` is the
    whole batch's). ``prices`` is the per-click price of each exposed ad, in exposure order; empty
    means first price (Eq. 7: the bid), the rule of every LLM-native mechanism.
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
    shown_ad_ids: AdIdList = Field(default_factory=list)
    latency_ms: float = Field(ge=0.0, default=0.0)
    generations: int = Field(ge=0, default=1)
    generated_tokens: int = Field(ge=0, default=0)
    generation_s: float = Field(ge=0.0, default=0.0, allow_inf_nan=False)
    prices: list[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "ResponseEvent":
        if self.n_ads != len(self.exposed_ads):
            raise ValueError("n_ads: must equal the number of exposed_ad_ids")
        if self.prices and len(self.prices) != self.n_ads:
            raise ValueError("prices: one per exposed ad, or none (first price)")
        return self

    @classmethod
    def for_query(cls, query: QueryEvent, *, exposed_ad_ids: Sequence[str] = (), **fields: Any) -> "ResponseEvent":
        """The response to ``query``: its id, question and profile, and its exposed candidates.

        Raises ``ValueError`` when ``query_id`` is given and differs from the query's, or when an
        exposed id is not among the query's candidates.
        """
        if fields.setdefault("query_id", query.query_id) != query.query_id:
            raise ValueError("query_id: differs from query.query_id")
        cands = query.candidates
        pos = list(map(cands.position, exposed_ad_ids))
        if -1 in pos:
            raise ValueError(f"exposed_ad_ids: not among the candidates: {[a for a, i in zip(exposed_ad_ids, pos) if i < 0]}")
        exposed = list(map(cands.__getitem__, pos))
        return cls(user=query.user, query=query.query, exposed_ads=exposed, **fields)

    @property
    def exposed_ad_ids(self) -> list[str]:
        """Ids of the exposed ads, in exposure order."""
        return [a.ad_id for a in self.exposed_ads]

    def bids(self) -> dict[str, int]:
        """Bids of the exposed ads (the only ones that can earn: Eq. 7 and 8)."""
        return {a.ad_id: a.bid for a in self.exposed_ads}

    def price_map(self) -> dict[str, float]:
        """Per-click price of each exposed ad: ``prices`` when given, else the bid (first price)."""
        if not self.prices:
            return {a.ad_id: float(a.bid) for a in self.exposed_ads}
        return {a.ad_id: p for a, p in zip(self.exposed_ads, self.prices)}


class ClickEvent(Event):
    """The user's decision on one exposed ad (one event per exposed ad, clicked or not).

    ``bid`` is copied from the query so that first-price revenue (Eq. 7) can be summed from
    the clicks table alone; ``price`` is what a click pays when the mechanism does not charge the
    bid (the slot auction's second price); absent, the click pays ``bid``.
    """

    query_id: NonEmpty
    ad_id: AdId
    clicked: bool
    reason: str = ""
    policy_version: NonEmpty
    user_id: NonEmpty
    bid: Bid
    click_probability: float | None = Field(default=None, ge=0.0, le=1.0)
    price: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)

    @property
    def charge(self) -> float:
        """What this click pays per click: ``price``, else the bid."""
        return float(self.bid) if self.price is None else self.price


class PolicyVersion(Event):
    """A published Ad-LLM policy (full weights or a LoRA adapter over ``base_model``) that responders may serve.

    ``uri`` is the version's folder as a plain path, what ``AdLLM.load_policy(version, uri, kind)``
    opens; ``sha256`` identifies the whole folder (the registry's hash over all its files);
    ``pctr_version`` is the reward model the epoch that made it was scored with.
    """

    version: NonEmpty
    parent: str | None = None
    uri: NonEmpty
    kind: Literal["full", "lora"] = "full"
    base_model: str = ""
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    pctr_version: str | None = None
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


class ArmEvidence(_Model):
    """What one arm (policy version) of a rollout had earned when the decision was made: its
    answered queries and the distinct users who asked them (the randomization unit), and the
    per-query means. ``users`` is 0 in decisions recorded before it was counted."""

    queries: int = Field(ge=0, default=0)
    users: int = Field(ge=0, default=0)
    revenue_per_query: float | None = None
    reward_per_query: float | None = None
    format_error_rate: float | None = None


RolloutState = Literal["canary", "promoted", "rolled_back", "inconclusive", "paused"]
_ROLLOUT_IDS = "7d3f9b1e-5a0c-4c55-9d0e-2f6b8a41c3d7"


class RolloutEvent(Event):
    """A decision about which policy versions responders serve, and to whom.

    After it, a responder serves ``candidate_version`` to the users whose stable hash (salted
    with ``salt``) falls below ``candidate_share`` and ``stable_version`` to everyone else
    (``consumers/routing.py``). ``state``: ``canary`` (the candidate serves its share),
    ``promoted`` (the candidate became ``stable_version``; share 0, no candidate), ``rolled_back``
    (share 0, the candidate is out), ``inconclusive`` (routed as ``rolled_back``: the canary's
    budget ended without a significant difference, so the stable version stays and the candidate
    is out; not a verdict that it is worse), ``paused`` (the shares stay as they are, the controller
    stops deciding). ``evidence`` holds each arm's queries, users and metrics at ``decided_at``,
    keyed by version; ``test`` the sequential test's statistics (``consumers/sequential.py``:
    estimate ``diff``, confidence sequence ``ci_low``..``ci_high``, ``p_value``, ...).

    Identity: :meth:`decision_id` derives ``event_id`` from the decision, so a restarted
    controller that decides again sends the same id, which readers and the warehouse keep once.

    Older form (schema version <= 4: ``action`` promote/rollback/pin, ``policy_version``,
    ``previous_version``) is still read: ``promote``/``pin`` X -> stable X, ``promoted``;
    ``rollback`` to X from Y -> stable X, candidate Y, share 0, ``rolled_back``.
    """

    stable_version: NonEmpty
    candidate_version: str | None = None
    candidate_share: float = Field(0.0, ge=0.0, le=1.0)
    state: RolloutState
    salt: str = ""
    reason: str = ""
    decided_at: datetime = Field(default_factory=_now)
    decided_by: str = ""
    evidence: dict[str, ArmEvidence] = Field(default_factory=dict)
    test: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _older_form(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "action" not in data or "state" in data:
            return data
        d = {k: v for k, v in data.items() if k not in ("action", "policy_version", "previous_version")}
        action, version = data.get("action"), data.get("policy_version")
        d["stable_version"] = version
        if action == "rollback":
            d.update(state="rolled_back", candidate_version=data.get("previous_version"), candidate_share=0.0)
        elif action in ("promote", "pin"):
            d.update(state="promoted", candidate_share=0.0)
        else:
            d["state"] = action  # refused by the state field with a readable message
        d.setdefault("decided_at", data.get("ts") or _now())
        return d

    @model_validator(mode="after")
    def _consistent(self) -> "RolloutEvent":
        if self.candidate_share > 0 and not self.candidate_version:
            raise ValueError("candidate_share: a positive share needs a candidate_version")
        if self.candidate_version and self.candidate_version == self.stable_version:
            raise ValueError("candidate_version: equals stable_version")
        return self

    @field_validator("decided_at")
    @classmethod
    def _decided_utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v.astimezone(timezone.utc)

    @property
    def routing_salt(self) -> str:
        """The salt users are hashed with: ``salt``, else the candidate version (one per rollout)."""
        return self.salt or (self.candidate_version or "")

    @staticmethod
    def decision_id(stable: str, candidate: str | None, state: str, share: float, nonce: str = "") -> str:
        """uuid5 of the decision: the same decision gives the same id (a restarted controller
        repeats no decision); a person's command passes a ``nonce`` so each command is its own."""
        return str(uuid.uuid5(uuid.UUID(_ROLLOUT_IDS), f"{stable}/{candidate or ''}/{state}/{share:.6f}/{nonce}"))


_EPOCH_REQUEST_IDS = "3b9e1c52-7f0a-4e8d-a6c1-5d2f7b9e0a14"


class EpochRequest(Event):
    """The stream app asks for one IRPO epoch: train ``parent_version`` against ``pctr_version``.

    Sent on ``auction.irpo-requests`` when a promoted pCTR version no epoch has used yet exists and
    ``impressions_since_last`` impressions of the stable policy arrived since the last request
    from that policy (``stream_app/irpo_trigger.py``); the trainer service
    (``llm-auction serve trainer``) runs the epoch and announces the version it publishes.
    ``parent_version`` is ``"base"`` for the base model. ``impressions_total`` is the parent's
    impression count when the request was made (the next request's watermark); ``pctr_version``
    the reward model to score with.

    Identity: ``event_id`` is :meth:`request_id` of (parent, pCTR version), so a trigger sent
    again is the same request, which the trainer serves once (the version's manifest records it).
    """

    parent_version: NonEmpty
    pctr_version: NonEmpty
    impressions_total: int = Field(ge=0)
    impressions_since_last: int = Field(ge=0)
    requested_by: str = ""

    @staticmethod
    def request_id(parent_version: str, pctr_version: str) -> str:
        """uuid5 of (parent, pCTR version): at most one epoch per pair."""
        return str(uuid.uuid5(uuid.UUID(_EPOCH_REQUEST_IDS), f"{parent_version}/{pctr_version}"))

    @model_validator(mode="after")
    def _derived_id(self) -> "EpochRequest":
        want = self.request_id(self.parent_version, self.pctr_version)
        if self.event_id != want:
            raise ValueError(f"event_id: must be EpochRequest.request_id(parent_version, pctr_version) = {want}")
        return self

    @classmethod
    def new(cls, parent_version: str, pctr_version: str, **fields: Any) -> "EpochRequest":
        """A request with its derived id."""
        return cls(event_id=cls.request_id(parent_version, pctr_version), parent_version=parent_version, pctr_version=pctr_version, **fields)


def _text(raw: bytes | bytearray | str | None) -> str | None:
    """Bytes as utf-8 text (undecodable bytes replaced: a dead letter must never fail to build)."""
    if raw is None:
        return None
    return raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)


class DeadLetter(Event):
    """A message a consumer could not process, kept with the reason so nothing is lost.

    Build one with :meth:`of`, which every service uses so that dead letters read the same
    whoever wrote them.
    """

    PAYLOAD_CHARS: ClassVar[int] = 100_000  # a dead letter stays one small message even for a huge poison record
    ERROR_CHARS: ClassVar[int] = 2000

    source_topic: NonEmpty
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    payload: str
    error: NonEmpty
    consumer: str = ""
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(
        cls, payload: bytes | bytearray | str | None, error: str, *, source_topic: str, partition: int | None = None,
        offset: int | None = None, key: bytes | bytearray | str | None = None, consumer: str = "",
    ) -> "DeadLetter":
        """The dead letter of ``payload`` (the record's value as read) refused for ``error``.

        Bytes (payload and key) are decoded as utf-8 with undecodable bytes replaced; the payload
        is cut to ``PAYLOAD_CHARS`` and the error to ``ERROR_CHARS``; an empty error reads
        ``unknown``. So it builds from any record, however malformed, and stays one small message.
        """
        return cls(
            source_topic=source_topic, partition=partition, offset=offset, key=_text(key),
            payload=(_text(payload) or "")[: cls.PAYLOAD_CHARS], error=(error.strip() or "unknown")[: cls.ERROR_CHARS], consumer=consumer,
        )
