"""Consumer lag per group and topic: each partition's committed offset against its true end.

Lag is how far a service is behind (back-pressure: a responder slower than the replay shows a
lag that grows). It is computed from offsets, which needs the true end of each partition, and
``end_offsets`` alone is not that on Tansu: ListOffsets(latest) can answer short after batched
writes, and stay short, so a lag read from it is low and can read 0 while records wait (the
measurement is in docs/kafka.md, Tansu's limits). A Fetch response carries the partition's high
watermark, which Tansu reports right. So the end used here is the larger of the listed end and
the high watermark of one fetch from the listed end (which reads at most the last batch of each
partition); on Apache Kafka both agree.

Committed offsets come from the group coordinator (no group is joined, so measuring disturbs no
service). A partition the group never committed counts from the log start, as the services'
``auto_offset_reset=earliest`` would read it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_auction.infra.kafka import admin_client, make_consumer

if TYPE_CHECKING:
    from llm_auction.schemas.settings import Settings


@dataclass(frozen=True)
class TopicLag:
    """One group on one topic: offsets summed over the topic's partitions."""

    group: str
    topic: str
    committed: int  # sum of the group's committed offsets (log start where it committed none)
    end: int  # sum of the partitions' true ends
    lag: int  # sum over partitions of max(0, end - committed): records written and not yet committed

    def as_dict(self) -> dict:
        return {"group": self.group, "topic": self.topic, "committed": self.committed, "end": self.end, "lag": self.lag}


def partition_ends(consumer, tps: list, timeout_s: float = 3.0) -> dict:
    """The true end offset of each of ``tps`` through ``consumer`` (no group; it is re-assigned):
    max(ListOffsets latest, the high watermark of a fetch from there). A partition whose fetch did
    not answer within ``timeout_s`` keeps the listed end, a lower bound."""
    listed = consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, listed[tp])
    deadline = time.monotonic() + timeout_s
    ends = dict(listed)
    pending = set(tps)
    while pending and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=100).items():
            if records:
                ends[tp] = max(ends[tp], records[-1].offset + 1)
        for tp in list(pending):
            hw = consumer.highwater(tp)
            if hw is not None:
                ends[tp] = max(ends[tp], hw)
                pending.discard(tp)
    return ends


class LagReader:
    """Reads lag repeatedly (the monitor's refresh, the soak's samples) over one admin client and
    one group-less consumer; close it when done. Use it from one thread."""

    def __init__(self, settings: Settings, bootstrap: str | None = None):
        self.admin = admin_client(settings, bootstrap)
        self.consumer = make_consumer(settings, bootstrap, None, enable_auto_commit=False)
        self._partitions: dict[str, list] = {}

    def _tps(self, topic: str) -> list:
        from kafka import TopicPartition

        if topic not in self._partitions:
            parts = self.consumer.partitions_for_topic(topic)
            if not parts:
                return []  # not created (yet): nothing to lag behind
            self._partitions[topic] = [TopicPartition(topic, p) for p in sorted(parts)]
        return self._partitions[topic]

    def groups(self) -> list[str]:
        """The consumer groups the broker knows, sorted."""
        return sorted({_group_id(g) for g in self.admin.list_groups()})

    def committed_topics(self, group: str) -> list[str]:
        """The topics ``group`` has committed offsets on, sorted (a group that never committed has none)."""
        got = self.admin.list_group_offsets({group: None}).get(group, {})
        return sorted({tp.topic for tp, om in got.items() if om is not None and om.offset is not None and om.offset >= 0})

    def all_lag(self, known: Mapping[str, Iterable[str]] | None = None) -> list[TopicLag]:
        """Lag of every group the broker lists, on the topics it committed on, plus ``known`` groups
        (group -> topics) whether or not they committed yet (a service that is behind from its first
        batch); sorted by group, then topic."""
        groups: dict[str, set[str]] = {g: set(t) for g, t in (known or {}).items()}
        for g in self.groups():
            groups.setdefault(g, set()).update(self.committed_topics(g))
        return self.lag({g: sorted(groups[g]) for g in sorted(groups) if groups[g]})

    def lag(self, groups: Mapping[str, Iterable[str]]) -> list[TopicLag]:
        """One row per (group, topic) in ``groups`` (group -> topics it reads), in that order."""
        wanted = {g: [t for t in topics] for g, topics in groups.items()}
        all_tps = sorted({tp for topics in wanted.values() for t in topics for tp in self._tps(t)})
        if not all_tps:
            return []
        ends = partition_ends(self.consumer, all_tps)
        starts = self.consumer.beginning_offsets(all_tps)
        rows = []
        for group, topics in wanted.items():
            tps = [tp for t in topics for tp in self._tps(t)]
            got = self.admin.list_group_offsets({group: tps})[group] if tps else {}
            committed = {tp: om.offset for tp, om in got.items() if om is not None and om.offset is not None and om.offset >= 0}
            for t in topics:
                part = self._tps(t)
                c = {tp: committed.get(tp, starts[tp]) for tp in part}
                rows.append(TopicLag(group, t, sum(c.values()), sum(ends[tp] for tp in part), sum(max(0, ends[tp] - c[tp]) for tp in part)))
        return rows

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()


def _group_id(g) -> str:
    """kafka-python answers ListGroups with dicts (3.x) or tuples (2.x)."""
    if isinstance(g, dict):
        return g.get("group_id") or g.get("group") or g.get("name")
    return g[0]
