"""The ad catalog shipped with the package (``llm_auction/data/ads.jsonl``), loaded as models."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from .ads import Ad


@lru_cache(maxsize=1)
def load_catalog() -> tuple[Ad, ...]:
    """The 100 ads (50 categories, two each) the simulation auctions, in file order."""
    text = resources.files("llm_auction.data").joinpath("ads.jsonl").read_text(encoding="utf-8")
    return tuple(Ad.model_validate(json.loads(line)) for line in text.splitlines() if line.strip())
