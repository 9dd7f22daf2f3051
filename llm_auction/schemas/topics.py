"""Topic names and their configuration: the one place both producers and the admin read.

Keys are the ``query_id`` for per-query topics so that one query's events share a partition
(the impressions join relies on it); version topics are keyed by version.
"""

from __future__ import annotations

from dataclasses import dataclass

QUERIES = "auction.queries"
RESPONSES = "auction.responses"
CLICKS = "auction.clicks"
DEAD_LETTER = "auction.dead-letter"
PCTR_VERSIONS = "auction.pctr-versions"
POLICY_VERSIONS = "auction.policy-versions"
ROLLOUT = "auction.rollout"
EVAL_ROLLOUT = "auction.eval-rollout"
IRPO_REQUESTS = "auction.irpo-requests"

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    compacted: bool = False

    def config(self) -> dict[str, str]:
        cfg = {"retention.ms": str(self.retention_ms)}
        if self.compacted:
            cfg["cleanup.policy"] = "compact"
        return cfg


TOPICS: dict[str, TopicSpec] = {
    t.name: t
    for t in (
        TopicSpec(QUERIES, 6, 7 * DAY_MS),
        TopicSpec(RESPONSES, 6, 7 * DAY_MS),
        TopicSpec(CLICKS, 6, 7 * DAY_MS),
        TopicSpec(DEAD_LETTER, 1, 30 * DAY_MS),
        # Version topics are small and read from the beginning; compaction keeps the latest
        # per key on brokers that support it (Tansu does not; unbounded retention covers it).
        TopicSpec(PCTR_VERSIONS, 1, -1, compacted=True),
        TopicSpec(POLICY_VERSIONS, 1, -1, compacted=True),
        TopicSpec(ROLLOUT, 1, -1),
        # ``llm-auction eval``'s routing (every user to one mechanism at a time), apart from
        # auction.rollout so an evaluation never changes what live responders serve.
        TopicSpec(EVAL_ROLLOUT, 1, -1),
        # The stream app's epoch requests, in order; it reads them back at start (what it asked
        # for), and the trainer consumes them: one partition, kept.
        TopicSpec(IRPO_REQUESTS, 1, -1),
    )
}
