"""Ad models: the catalog ad and the candidate (an ad with a bid for one query).

Kept apart from the events so that :mod:`.candidates` (a query's candidates as columns) and
:mod:`.catalog` can build on them without importing the events that use them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

AdId = Annotated[str, StringConstraints(pattern=r"^Ad-\d{4}$")]
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
