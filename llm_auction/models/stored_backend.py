"""An Ad-LLM backend that writes a stored answer instantly: for measuring the plumbing.

The answer names the query's highest-bid shown candidate (the first of equals) with a correct marker, so downstream
hops (allocation, user simulator, warehouse) do their real work; only the LLM is taken out, so
that a benchmark of the streaming path measures Kafka, the services and ClickHouse, not
generation.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_auction.schemas import QueryEvent

TEMPLATE = "Here is a short, helpful answer to your question. If it helps, @{title}@[{ad_id}] is a good fit for this."


class StoredAnswerBackend:
    name = "stored"

    def __init__(self, template: str = TEMPLATE):
        self.template = template

    def generate(self, queries: list[QueryEvent], policy_version: str | Sequence[str], n: int = 1) -> list[list[str]]:
        out = []
        for q in queries:
            best = q.candidates.highest_bid()  # one C-level pass over the bid column
            out.append([self.template.format(title=best.title, ad_id=best.ad_id)] * n)
        return out

    def load_policy(self, version: str, uri: str, kind: str = "full") -> None:
        """Nothing to load: every version answers the same."""

    def close(self) -> None:
        """Nothing to release."""
