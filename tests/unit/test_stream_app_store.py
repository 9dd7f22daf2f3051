"""The stream app's pieces that need no broker: impressions -> Arrow rows for stream_impressions,
and the CLI wiring of ``serve stream-app``."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pyarrow as pa

from llm_auction.cli import build_parser
from llm_auction.infra.ddl import migrations
from llm_auction.infra.warehouse import TS
from llm_auction.stream_app.join import Impression
from llm_auction.stream_app.store import IMPRESSIONS_SCHEMA, impressions_table


def test_impressions_become_arrow_rows_with_ms_utc_times_and_nullable_truth():
    ts = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
    rows = [
        Impression("q1", ts.timestamp(), "v1", "u1", "tea?", "answer", "Ad-0001", 42, True, 0.25),
        Impression("q1", ts.timestamp(), "v1", "u1", "tea?", "answer", "Ad-0002", 7, False).to_dict(),  # no truth
    ]
    joined = datetime(2026, 3, 1, 12, 0, 5, tzinfo=timezone.utc)
    t = impressions_table(rows, joined_at=joined)
    assert t.schema == IMPRESSIONS_SCHEMA
    got = t.to_pylist()
    assert [(r["ad_id"], r["bid"], r["clicked"], r["click_probability"]) for r in got] == [("Ad-0001", 42, 1, 0.25), ("Ad-0002", 7, 0, None)]
    assert got[0]["ts"] == ts and got[0]["joined_at"] == joined
    assert {k: got[0][k] for k in ("query_id", "policy_version", "user_id", "query", "text")} == {"query_id": "q1", "policy_version": "v1", "user_id": "u1", "query": "tea?", "text": "answer"}


def test_the_stream_impressions_table_has_the_impression_rows_columns():
    # migration 0006 (frozen once applied) and the Arrow schema derived from the Impression dataclass
    sql = next(m.sql for m in migrations() if m.version == 6)
    body = re.search(r"CREATE TABLE IF NOT EXISTS llm_auction\.stream_impressions\s*\((.*?)\n\)", sql, re.S).group(1)
    columns = dict(re.findall(r"^\s*(\w+)\s+(.+?),?\s*$", body, re.M))
    arrow = {"String": pa.string(), "LowCardinality(String)": pa.string(), "UInt8": pa.uint8(), "Nullable(Float64)": pa.float64(), "DateTime64(3, 'UTC')": TS}
    assert {name: arrow[t] for name, t in columns.items()} == dict(zip(IMPRESSIONS_SCHEMA.names, IMPRESSIONS_SCHEMA.types))


def test_serve_stream_app_and_stream_app_share_one_handler():
    from llm_auction.cli import stream_app

    p = build_parser()
    a = p.parse_args(["serve", "stream-app", "--app-id", "x", "--partitions", "3", "--holdout", "0.2", "--epochs", "5", "--patience", "4"])
    b = p.parse_args(["stream-app", "--responses-topic", "r", "--clicks-topic", "c"])
    assert a.handler is stream_app.run and b.handler is stream_app.run
    assert (a.app_id, a.partitions, a.holdout, a.epochs, a.patience) == ("x", 3, 0.2, 5, 4)
    assert (b.responses_topic, b.clicks_topic, b.versions_topic) == ("r", "c", None)
