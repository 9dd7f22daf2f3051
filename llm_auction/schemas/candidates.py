"""A query's candidate ads as two columns, ad ids and bids; a model is built only when asked for.

Contract: :class:`Candidates` is a read-only sequence of ``CandidateAd``. ``len``, indexing,
iteration, slicing (which gives ``Candidates``) and ``==`` against a list of models behave as on a
list. A candidate that is a catalog ad as is (``llm_auction/data/ads.jsonl``: same id, title and
category) is kept as its id and bid; any other candidate is kept as a whole model. Models are
built on access, from a cache shared by every query (at most 100 ads x 100 bids).

Why: the responder and the sink walk a query's candidates several times (title check, highest
bid, shown ids, the warehouse's bids map); building and touching 100 models per query was a large
share of both services' CPU (see docs/benchmarks.md).

On the wire (schema version 4), a query whose candidates are all catalog ads carries one object,
``{"ad_ids": "Ad-4820 Ad-3356 ...", "bids": [42, 7, ...]}``, cheaper to parse and much smaller
than the list form (figures: docs/benchmarks.md, the wire format's measurements). Any other query carries a list: ``[ad_id, bid]`` for catalog ads and
whole objects for the others (the schema-version-3 form, which is still read). A compact id that
the local catalog lacks, or a bid outside 1..100, is a schema error like any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

from pydantic_core import core_schema

from .ads import AD_ID_LINE_JSON_SCHEMA, Ad, CandidateAd
from .catalog import load_catalog

_INT = {int}
_VALID_BIDS = bytes(range(1, 101))
_MODELS: dict[tuple[str, int], CandidateAd] = {}  # (ad_id, bid) -> the catalog candidate (frozen, shared)


@lru_cache(maxsize=1)
def catalog_ads() -> dict[str, Ad]:
    """The package catalog by id: what compact candidates are restored from."""
    return {a.ad_id: a for a in load_catalog()}


@lru_cache(maxsize=1)
def _catalog_ids() -> frozenset[str]:
    return frozenset(catalog_ads())


def catalog_candidate(ad_id: str, bid: int) -> CandidateAd:
    """Catalog ad ``ad_id`` with ``bid`` as a model, built once and shared (``KeyError`` if not a catalog id)."""
    c = _MODELS.get((ad_id, bid))
    if c is None:
        a = catalog_ads()[ad_id]
        c = _MODELS[(ad_id, bid)] = CandidateAd(ad_id=ad_id, title=a.title, category=a.category, bid=bid)
    return c


def _no_duplicates(ad_ids: Sequence[str]) -> None:
    """A query offers each ad once (one C-level pass in the common case)."""
    if len(set(ad_ids)) != len(ad_ids):
        seen: set[str] = set()
        dup = next(a for a in ad_ids if a in seen or seen.add(a))
        raise ValueError(f"duplicate ad_id {dup}")


def _bad_bid(i: int, bid: Any) -> ValueError:
    return ValueError(f"candidates.{i}: bid must be an integer in 1..100, got {bid!r}")


def _unknown_id(i: int, ad_id: Any) -> ValueError:
    return ValueError(f"candidates.{i}: {ad_id!r} is not a catalog ad id (send the whole candidate for ads outside the catalog)")


def _pair(e: list, i: int) -> CandidateAd:
    """Validate one compact candidate ``[ad_id, bid]`` (schema version 3) and restore it from the catalog."""
    if len(e) != 2:
        raise ValueError(f"candidates.{i}: a compact candidate is [ad_id, bid], got {len(e)} items")
    ad_id, bid = e
    if not isinstance(ad_id, str) or ad_id not in _catalog_ids():
        raise _unknown_id(i, ad_id)
    if type(bid) is not int or not 1 <= bid <= 100:
        raise _bad_bid(i, bid)
    return catalog_candidate(ad_id, bid)


_IDS: dict[str, tuple[str, ...]] = {}  # the wire's ad_ids string -> its checked ids
_IDS_MAX = 4096


def _checked_ids(ad_ids: str) -> tuple[str, ...]:
    """The ids of a column object's ``ad_ids``: catalog ids, no duplicates, at least one.

    Queries offer the same candidate list again and again (the paper's auctions show all 100
    ads to every query; a retriever's top K repeats too), so a checked list is remembered by its
    string: one dict lookup instead of splitting and hashing 100 ids per query. The memory is
    bounded (cleared when full) and holds only lists that passed the checks.
    """
    ids = _IDS.get(ad_ids)
    if ids is not None:
        return ids
    ids = tuple(ad_ids.split(" ")) if ad_ids else ()
    if not ids:
        raise ValueError("candidates: a query needs at least one candidate")
    known = _catalog_ids()
    if not known.issuperset(ids):
        raise next(_unknown_id(i, a) for i, a in enumerate(ids) if a not in known)
    _no_duplicates(ids)
    if len(_IDS) >= _IDS_MAX:
        _IDS.clear()
    _IDS[ad_ids] = ids
    return ids


class Candidates(Sequence[CandidateAd]):
    """The candidate ads of one query: ``ad_ids`` (a tuple) and ``bids`` (bytes, one per ad, 1..100).

    Build one from outside data with :meth:`of` (or let pydantic do it: ``QueryEvent(candidates=[...])``);
    the constructor trusts its arguments.
    """

    __slots__ = ("ad_ids", "bids", "_whole")

    def __init__(self, ad_ids: tuple[str, ...], bids: bytes, whole: dict[str, CandidateAd] | None = None):
        self.ad_ids = ad_ids
        self.bids = bids
        self._whole = whole or None  # ad_id -> model, for candidates that are not catalog ads as is

    # -- building --------------------------------------------------------------------------
    @classmethod
    def of(cls, value: Any) -> Candidates:
        """Candidates from ``Candidates`` (returned as is), the wire's column object, or a list of
        ``CandidateAd`` models, their dicts or ``[ad_id, bid]`` pairs. ``ValueError`` names the first bad one."""
        if type(value) is cls:
            return value
        if type(value) is dict:
            return cls._from_columns(value)
        if isinstance(value, (list, tuple)):
            return cls.from_models(
                e if isinstance(e, CandidateAd) else _pair(e, i) if type(e) is list else CandidateAd.model_validate(e)
                for i, e in enumerate(value)
            )
        raise ValueError(f"candidates: expected a list of candidates or the column object, got {type(value).__name__}")

    @classmethod
    def from_models(cls, models: Iterable[CandidateAd]) -> Candidates:
        """From validated models: catalog ads as is become two column entries, others stay whole."""
        ads = catalog_ads()
        ids: list[str] = []
        bids = bytearray()
        whole: dict[str, CandidateAd] = {}
        for c in models:
            a = ads.get(c.ad_id)
            if type(c) is not CandidateAd or a is None or a.title != c.title or a.category != c.category:
                whole[c.ad_id] = c
            else:
                _MODELS.setdefault((c.ad_id, c.bid), c)
            ids.append(c.ad_id)
            bids.append(c.bid)
        if not ids:
            raise ValueError("candidates: a query needs at least one candidate")
        _no_duplicates(ids)
        return cls(tuple(ids), bytes(bids), whole)

    @classmethod
    def _from_columns(cls, value: dict) -> Candidates:
        """The wire's column object, checked in C-level passes (every hop that reads queries runs this)."""
        if len(value) != 2 or "ad_ids" not in value or "bids" not in value:
            raise ValueError(f"candidates: the column object has exactly the keys 'ad_ids' and 'bids', got {sorted(value)}")
        ad_ids, bids = value["ad_ids"], value["bids"]
        if type(ad_ids) is not str or type(bids) is not list:
            raise ValueError("candidates: 'ad_ids' is one string of ids separated by spaces and 'bids' a list of integers")
        ids = _checked_ids(ad_ids)
        if len(ids) != len(bids):
            raise ValueError(f"candidates: {len(ids)} ad ids but {len(bids)} bids")
        # bytes() takes ints in 0..255 and deleting the valid values 1..100 must leave nothing; a
        # JSON true is a bool, which bytes() takes as 1: the type pass rejects it.
        try:
            packed = bytes(bids) if set(map(type, bids)) == _INT else None
        except ValueError:
            packed = None
        if packed is None or packed.translate(None, _VALID_BIDS):
            raise next(_bad_bid(i, b) for i, b in enumerate(bids) if type(b) is not int or not 1 <= b <= 100)
        return cls(ids, packed)

    # -- pydantic: a field typed ``Candidates`` validates and serializes through these ----------
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_wrap_validator_function(
            cls._validate,
            handler.generate_schema(list[CandidateAd]),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v, info: v._serialize(info), info_arg=True),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: Any) -> dict[str, Any]:
        """Both wire forms: the column object (catalog ads) or a list of whole candidates and
        ``[ad_id, bid]`` pairs (the version-3 form, still read)."""
        listed = handler.resolve_ref_schema(handler(schema))  # list[CandidateAd]
        bid = {"type": "integer", "minimum": 1, "maximum": 100}
        columns = {
            "type": "object", "title": "CandidateColumns", "additionalProperties": False, "required": ["ad_ids", "bids"],
            "properties": {"ad_ids": AD_ID_LINE_JSON_SCHEMA, "bids": {"type": "array", "items": bid, "description": "one bid per ad id, in order"}},
        }
        pair = {"type": "array", "prefixItems": [{"type": "string", "pattern": r"^Ad-[0-9]{4}$"}, bid], "minItems": 2, "maxItems": 2}
        return {"anyOf": [columns, {"type": "array", "items": {"anyOf": [listed["items"], pair]}}]}

    @classmethod
    def _validate(cls, value: Any, handler: Any) -> Candidates:
        if type(value) is cls:
            return value
        if type(value) is dict:
            return cls._from_columns(value)
        if type(value) is list:  # pairs restored here; whole entries validated by pydantic (errors keep their path)
            value = [_pair(e, i) if type(e) is list else e for i, e in enumerate(value)]
        return cls.from_models(handler(value))

    def _serialize(self, info: Any) -> Any:
        return self.to_wire() if info.mode_is_json() else [c.model_dump() for c in self]

    def to_wire(self) -> dict | list:
        """The JSON form: the column object when every candidate is a catalog ad, else a list."""
        if self._whole is None:
            return {"ad_ids": " ".join(self.ad_ids), "bids": list(self.bids)}
        w = self._whole
        return [w[a].model_dump() if a in w else [a, b] for a, b in zip(self.ad_ids, self.bids)]

    # -- reading -------------------------------------------------------------------------------
    @property
    def catalog_only(self) -> bool:
        """Every candidate is a catalog ad as is (id, title and category): nothing to check against the catalog."""
        return self._whole is None

    def _at(self, ad_id: str, bid: int) -> CandidateAd:
        w = self._whole
        if w is not None and (c := w.get(ad_id)) is not None:
            return c
        return catalog_candidate(ad_id, bid)

    def __len__(self) -> int:
        return len(self.ad_ids)

    def __getitem__(self, i):  # type: ignore[override]
        if type(i) is slice:
            ids = self.ad_ids[i]
            w = self._whole
            return Candidates(ids, self.bids[i], {a: w[a] for a in ids if a in w} if w else None)
        return self._at(self.ad_ids[i], self.bids[i])

    def __iter__(self) -> Iterator[CandidateAd]:
        return map(self._at, self.ad_ids, self.bids)

    def position(self, ad_id: str) -> int:
        """Index of candidate ``ad_id``, or -1."""
        try:
            return self.ad_ids.index(ad_id)
        except ValueError:
            return -1

    def highest_bid(self) -> CandidateAd:
        """The candidate with the highest bid, the first of equals (one C-level pass over the bids)."""
        return self[self.bids.index(max(self.bids))]

    def bid_map(self) -> dict[str, int]:
        """ad_id -> bid."""
        return dict(zip(self.ad_ids, self.bids))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Candidates):
            return self.ad_ids == other.ad_ids and self.bids == other.bids and self._whole == other._whole
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compared by value, like the list it replaces

    def __repr__(self) -> str:
        return f"Candidates({list(self)!r})"

    # Immutable: copies are the object itself; pickling keeps the columns.
    def __copy__(self) -> Candidates:
        return self

    def __deepcopy__(self, memo: dict) -> Candidates:
        return self

    def __reduce__(self):
        return (Candidates, (self.ad_ids, self.bids, self._whole))
