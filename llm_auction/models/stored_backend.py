"""An Ad-LLM backend that writes a stored answer instantly: for measuring the plumbing.

The answer names the query's highest-bid shown candidate (the first of equals) with a correct
marker, so downstream hops (allocation, user simulator, warehouse) do their real work; only the
LLM is taken out, so a benchmark of the streaming path measures Kafka, the services and
ClickHouse, not generation. Every policy version answers alike, loaded or not: it records what
``load_policy`` registered (``versions``) but serves any name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llm_auction.schemas import QueryEvent

from .adllm import AdLLMConfig, PolicyKind, per_query_versions

TEMPLATE = "Here is a short, helpful answer to your question. If it helps, @{title}@[{ad_id}] is a good fit for this."


class StoredAnswerBackend:
    name = "stored"

    def __init__(self, config: AdLLMConfig | None = None, template: str = TEMPLATE):
        self.config = config or AdLLMConfig(model_path=None)
        self.template = template
        self._versions: dict[str, str] = {}

    @property
    def versions(self) -> list[str]:
        return [self.config.base_version, *self._versions]

    def generate(self, queries: list[QueryEvent], policy_version: str | Sequence[str], n: int = 1) -> list[list[str]]:
        per_query_versions(queries, policy_version)  # checks a per-query list's length
        out = []
        for q in queries:
            best = q.candidates.highest_bid()  # one C-level pass over the bid column
            out.append([self.template.format(title=best.title, ad_id=best.ad_id)] * n)
        return out

    def load_policy(self, version: str, uri: str | Path, kind: PolicyKind = "full") -> None:
        """Remember the version (nothing to load: every version answers the same)."""
        self._versions[version] = str(uri)

    def close(self) -> None:
        """Nothing to release."""
