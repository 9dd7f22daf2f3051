"""The shipped migrations and the events -> Arrow conversion, checked without an engine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa

from llm_auction.infra import warehouse
from llm_auction.infra.ddl import migrations
from llm_auction.schemas.events import CandidateAd, ClickEvent, QueryEvent, ResponseEvent, UserProfile

T = datetime(2026, 3, 1, 12, 0, 0, 123987, tzinfo=timezone.utc)


def test_migrations_are_versioned_in_order_and_split_into_statements():
    ms = migrations()
    assert [m.name for m in ms] == ["0001_database", "0002_event_tables", "0003_views", "0004_impressions_final", "0005_reward_per_query", "0006_stream_app", "0007_rollout_decisions", "0008_mechanism_costs"]
    assert [m.version for m in ms] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [len(m.statements()) for m in ms] == [2, 3, 3, 1, 2, 2, 1, 4]
    first = ms[0].statements()
    assert first[0] == "CREATE DATABASE IF NOT EXISTS llm_auction"
    for m in ms:
        for stmt in m.statements():
            assert "llm_auction." in stmt or stmt.startswith("CREATE DATABASE")
            assert not stmt.rstrip().endswith(";")
    assert len({m.checksum for m in ms}) == len(ms)


def _query() -> QueryEvent:
    user = UserProfile(user_id="u7", info="likes tea", interests=["tea"])
    cands = [CandidateAd(ad_id="Ad-0001", title="Green Tea", category="tea", bid=42), CandidateAd(ad_id="Ad-0002", title="Mug", category="home", bid=7)]
    return QueryEvent(event_id="q-ev", query_id="q1", user=user, query="which tea?", candidates=cands, split="test", ts=T)


def test_queries_table_keeps_bids_as_a_map():
    t = warehouse.queries_table([_query()])
    assert t.schema == warehouse.QUERIES_SCHEMA
    row = t.to_pylist()[0]
    assert row == {
        "event_id": "q-ev",
        "ts": datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc),
        "query_id": "q1",
        "user_id": "u7",
        "query": "which tea?",
        "split": "test",
        "n_candidates": 2,
        "bids": [("Ad-0001", 42), ("Ad-0002", 7)],
    }


def test_queries_table_bids_map_per_event_in_candidate_order():
    # bids is built from flat keys/values and offsets: each event's map must hold exactly its own
    # candidates, in their order, whatever the number of candidates per event.
    user = UserProfile(user_id="u8", info="cooks", interests=["food"])
    cands = [
        CandidateAd(ad_id="Ad-0003", title="Pan", category="home", bid=100),
        CandidateAd(ad_id="Ad-0001", title="Green Tea", category="tea", bid=1),
        CandidateAd(ad_id="Ad-0009", title="Knife", category="home", bid=55),
    ]
    second = QueryEvent(event_id="q-ev2", query_id="q2", user=user, query="which pan?", candidates=cands, ts=T)
    t = warehouse.queries_table([_query(), second])
    assert t.schema == warehouse.QUERIES_SCHEMA
    bids = t.column("bids")
    assert bids.type == pa.map_(pa.string(), pa.uint8())
    assert bids.to_pylist() == [[("Ad-0001", 42), ("Ad-0002", 7)], [("Ad-0003", 100), ("Ad-0001", 1), ("Ad-0009", 55)]]
    assert bids.chunk(0).offsets.to_pylist() == [0, 2, 5]
    assert t.column("n_candidates").to_pylist() == [2, 3]
    assert t.column("event_id").to_pylist() == ["q-ev", "q-ev2"]


def test_queries_table_of_no_events_is_empty_with_the_schema():
    t = warehouse.queries_table([])
    assert t.schema == warehouse.QUERIES_SCHEMA and t.num_rows == 0
    assert t.column("bids").to_pylist() == []


def test_responses_table_flattens_the_response():
    q = _query()
    r = ResponseEvent.for_query(
        event_id="r-ev", query_id="q1", policy_version="v3", query=q, text="try @Green Tea@[Ad-0001]", exposed_ad_ids=["Ad-0001"], n_ads=1,
        format_error=True, format_reasons=["unknown id Ad-0009"], shown_ad_ids=["Ad-0001"], latency_ms=12.5, ts=T + timedelta(hours=1, minutes=30),
    )
    row = warehouse.responses_table([r]).to_pylist()[0]
    assert row == {
        "event_id": "r-ev", "ts": datetime(2026, 3, 1, 13, 30, 0, 123000, tzinfo=timezone.utc), "query_id": "q1", "policy_version": "v3",
        "user_id": "u7", "query": "which tea?", "text": "try @Green Tea@[Ad-0001]", "exposed_ad_ids": ["Ad-0001"], "n_ads": 1,
        "format_error": 1, "format_reasons": ["unknown id Ad-0009"], "shown_ad_ids": ["Ad-0001"], "latency_ms": 12.5,
        "generations": 1, "generated_tokens": 0, "generation_s": 0.0, "prices": [],  # an answer that states no cost: one generation, first price
    }


def test_responses_table_carries_the_cost_and_prices_after_the_older_columns():
    # migration 0008 appends the columns (ALTER ADD COLUMN), so the schema lists them last as well
    q = _query()
    r = ResponseEvent.for_query(
        q, policy_version="slot", text="t", exposed_ad_ids=["Ad-0002", "Ad-0001"], n_ads=2, generations=4, generated_tokens=311,
        generation_s=0.75, prices=[7.0, 3.5], ts=T,
    )
    t = warehouse.responses_table([r])
    assert t.schema == warehouse.RESPONSES_SCHEMA
    assert t.schema.names[-5:] == ["latency_ms", "generations", "generated_tokens", "generation_s", "prices"]
    assert (t.column("generations").type, t.column("generated_tokens").type, t.column("prices").type) == (pa.uint16(), pa.uint32(), pa.list_(pa.float64()))
    row = t.to_pylist()[0]
    assert {k: row[k] for k in ("exposed_ad_ids", "generations", "generated_tokens", "generation_s", "prices")} == {
        "exposed_ad_ids": ["Ad-0002", "Ad-0001"], "generations": 4, "generated_tokens": 311, "generation_s": 0.75, "prices": [7.0, 3.5],
    }


def test_clicks_table_columns_types_and_nulls():
    # a non-UTC aware ts is stored as the same instant in UTC, truncated to milliseconds
    other_tz = timezone(timedelta(hours=-5))
    events = [
        ClickEvent(event_id="c1", query_id="q1", ad_id="Ad-0001", clicked=True, reason="relevant", policy_version="v3", user_id="u7", bid=42, click_probability=0.25, ts=T),
        ClickEvent(event_id="c2", query_id="q1", ad_id="Ad-0002", clicked=False, policy_version="v3", user_id="u7", bid=7, ts=datetime(2026, 3, 1, 7, 0, 0, 999999, tzinfo=other_tz)),
    ]
    t = warehouse.clicks_table(events)
    assert t.schema == warehouse.CLICKS_SCHEMA
    assert t.column("clicked").to_pylist() == [1, 0]
    assert t.column("bid").type == pa.uint8() and t.column("bid").to_pylist() == [42, 7]
    assert t.column("click_probability").to_pylist() == [0.25, None]
    assert t.schema.names[-1] == "price" and t.column("price").type == pa.float64() and t.column("price").to_pylist() == [None, None]
    priced = warehouse.clicks_table([events[0].model_copy(update={"price": 12.5})])
    assert priced.column("price").to_pylist() == [12.5]
    assert t.column("ts").to_pylist() == [datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc), datetime(2026, 3, 1, 12, 0, 0, 999000, tzinfo=timezone.utc)]


def test_empty_batches_build_empty_tables():
    assert warehouse.clicks_table([]).num_rows == 0
    assert warehouse.responses_table([]).num_rows == 0
    assert warehouse.queries_table([]).num_rows == 0


# ---------------------------------------------------------------------------------------------
# insert_arrow: one clickhouse-connect call with the settings the sink relies on (a fake, no engine)


class _FakeClient:
    def __init__(self):
        self.calls: list = []

    def insert_arrow(self, table, data, database=None, settings=None):
        self.calls.append((table, data, database, settings))


def _click(i: int) -> ClickEvent:
    return ClickEvent(event_id=f"c{i}", query_id="q1", ad_id="Ad-0001", clicked=i % 2 == 0, policy_version="v3", user_id="u7", bid=42, ts=T)


def test_an_insert_is_one_arrow_call_that_returns_once_the_rows_are_in_a_part(monkeypatch):
    client = _FakeClient()
    events = [_click(i) for i in range(5)]
    assert warehouse.insert_clicks(client, events) == 5
    [(table, data, database, settings)] = client.calls
    assert (table, database) == ("clicks", "llm_auction") and data.equals(warehouse.clicks_table(events))
    assert settings == {"async_insert": 0, "max_threads": 1}  # no async buffer: offsets commit after the insert
    # a large insert keeps the engine's default threads
    monkeypatch.setattr(warehouse, "SINGLE_THREAD_ROWS", 4)
    warehouse.insert_clicks(client, events)
    assert client.calls[1][3] == {"async_insert": 0}
    assert warehouse.insert_clicks(client, []) == 0 and len(client.calls) == 2
