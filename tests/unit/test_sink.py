"""The sink handler: a mixed batch in, one insert per event table out (a fake client, no engine)."""

from __future__ import annotations

from datetime import datetime, timezone

from llm_auction.consumers.service import Item
from llm_auction.consumers.sink import SinkHandler
from llm_auction.schemas.events import CandidateAd, ClickEvent, PolicyVersion, QueryEvent, ResponseEvent, UserProfile

T = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
USER = UserProfile(user_id="u7", info="likes tea", interests=["tea"])
CANDS = [CandidateAd(ad_id="Ad-0001", title="Green Tea", category="tea", bid=42), CandidateAd(ad_id="Ad-0002", title="Mug", category="home", bid=7)]


class RecordingClient:
    """Takes inserts as clickhouse-connect's insert_arrow does."""

    def __init__(self):
        self.inserts: list[tuple[str, list]] = []

    def insert_arrow(self, table, data, database=None, settings=None):
        self.inserts.append((table, data.column("event_id").to_pylist()))


class ClickSubclass(ClickEvent):
    pass


def query(i: int) -> QueryEvent:
    return QueryEvent(event_id=f"q{i}", query_id=f"q{i}", user=USER, query="which tea?", candidates=CANDS, ts=T)


def response(i: int) -> ResponseEvent:
    return ResponseEvent.for_query(query(i), event_id=f"r{i}", policy_version="v1", text="answer", exposed_ad_ids=["Ad-0001"], n_ads=1, ts=T)


def click(i: int, cls=ClickEvent) -> ClickEvent:
    return cls(event_id=f"c{i}", query_id=f"q{i}", ad_id="Ad-0001", clicked=i % 2 == 0, policy_version="v1", user_id="u7", bid=42, ts=T)


def test_a_mixed_batch_goes_out_as_one_insert_per_table_in_arrival_order():
    client = RecordingClient()
    events = [click(0), query(1), response(1), click(1), query(2), PolicyVersion(version="v2", uri="file:///v2"), click(2, ClickSubclass), response(2)]
    SinkHandler(client).handle([Item(record=None, event=e) for e in events])
    assert client.inserts == [("queries", ["q1", "q2"]), ("responses", ["r1", "r2"]), ("clicks", ["c0", "c1", "c2"])]


def test_tables_without_events_get_no_insert():
    client = RecordingClient()
    SinkHandler(client).handle([Item(record=None, event=click(0))])
    assert client.inserts == [("clicks", ["c0"])]
    SinkHandler(client).handle([])
    assert client.inserts == [("clicks", ["c0"])]
