"""Ad models: the catalog ad and the candidate (an ad with a bid for one query).

Kept apart from the events so that :mod:`.candidates` (a query's candidates as columns) and
:mod:`.catalog` can build on them without importing the events that use them.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints, WithJsonSchema, WrapValidator

AdId = Annotated[str, StringConstraints(pattern=r"^Ad-[0-9]{4}$")]
Bid = Annotated[int, Field(ge=1, le=100)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]


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


_AD_ID_LINE = re.compile(r"Ad-[0-9]{4}(?: Ad-[0-9]{4})*")
AD_ID_LINE_JSON_SCHEMA = {"type": "string", "pattern": r"^(Ad-[0-9]{4}( Ad-[0-9]{4})*)?$", "description": "ad ids separated by single spaces"}


@lru_cache(maxsize=4096)
def _split_ad_ids(line: str) -> tuple[str, ...]:
    if not line:
        return ()
    if _AD_ID_LINE.fullmatch(line) is None:
        raise ValueError("expected ad ids 'Ad-NNNN' separated by single spaces")
    return tuple(line.split(" "))


def _ad_ids_from_line(value: Any, handler: Any) -> list[str]:
    return list(_split_ad_ids(value)) if type(value) is str else handler(value)


AdIdList = Annotated[
    list[AdId],
    WrapValidator(_ad_ids_from_line),
    PlainSerializer(" ".join, when_used="json"),
    WithJsonSchema({"anyOf": [AD_ID_LINE_JSON_SCHEMA, {"type": "array", "items": {"type": "string", "pattern": r"^Ad-[0-9]{4}$"}}]}),
]
"""A list of ad ids that travels as one string, ``"Ad-4820 Ad-3356"`` (a JSON list is read too).

A response lists the ids of every candidate its model was shown. As a JSON list those ids were
a large part of each response's size and of its decoding (one string per id, each matched
against the id pattern), paid by every hop that reads responses (docs/benchmarks.md#figures-behind-defaults-and-code-choices). One string is checked
by one regular expression, and a line seen before (the same shown list repeats across queries)
by one lookup.
"""
