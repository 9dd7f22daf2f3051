"""Migrations, the warehouse CLI, and the embedded engine's one-folder-per-process rule, on a real engine."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from llm_auction.infra import ddl, warehouse
from llm_auction.infra.clickhouse import get_client, parse_url
from llm_auction.infra.errors import InfraError
from llm_auction.schemas.events import ClickEvent

pytestmark = pytest.mark.integration

ALL = ["0001_database", "0002_event_tables", "0003_views", "0004_impressions_final", "0005_reward_per_query", "0006_stream_app", "0007_rollout_decisions", "0008_mechanism_costs"]


def objects(client) -> dict[str, str]:
    rows = client.query("SELECT name, engine FROM system.tables WHERE database = 'llm_auction' ORDER BY name").result_rows
    return dict(rows)


def test_migrate_from_scratch_then_twice_is_a_noop(clickhouse_client):
    client = clickhouse_client
    client.command("DROP DATABASE IF EXISTS llm_auction SYNC")
    assert ddl.applied(client) == {}
    assert ddl.migrate(client) == ALL
    assert ddl.migrate(client) == []
    assert ddl.migrate(client) == []
    assert [r["name"] for r in ddl.applied(client).values()] == ALL
    assert client.query("SELECT count() FROM llm_auction.schema_migrations").result_rows[0][0] == len(ALL)
    assert objects(client) == {
        "clicks": "ReplacingMergeTree",
        "impressions": "View",
        "queries": "ReplacingMergeTree",
        "responses": "ReplacingMergeTree",
        "revenue_by_policy": "View",
        "revenue_per_minute": "View",
        "rollout_decisions": "ReplacingMergeTree",
        "schema_migrations": "ReplacingMergeTree",
        "stream_impressions": "ReplacingMergeTree",
        "stream_pctr_versions": "ReplacingMergeTree",
    }
    keys = client.query(
        "SELECT name, partition_key, sorting_key FROM system.tables WHERE database = 'llm_auction' AND name IN ('queries', 'responses', 'clicks') ORDER BY name"
    ).result_rows
    assert keys == [(t, "toYYYYMMDD(ts)", "ts, event_id") for t in ("clicks", "queries", "responses")]
    # 0008 appends the mechanism's cost and prices to the tables, as the Arrow schemas list them
    for table, schema in (("responses", warehouse.RESPONSES_SCHEMA), ("clicks", warehouse.CLICKS_SCHEMA)):
        cols = client.query(f"SELECT name, type FROM system.columns WHERE database = 'llm_auction' AND table = '{table}' ORDER BY position").result_rows
        assert [c[0] for c in cols] == schema.names
    types = dict(client.query("SELECT name, type FROM system.columns WHERE database = 'llm_auction' AND table IN ('responses', 'clicks') AND (name LIKE '%price%' OR name LIKE 'generat%')").result_rows)
    assert types == {"generations": "UInt16", "generated_tokens": "UInt32", "generation_s": "Float64", "prices": "Array(Float64)", "price": "Nullable(Float64)"}
    cols = client.query("SELECT name, type FROM system.columns WHERE database = 'llm_auction' AND table = 'revenue_per_minute' ORDER BY position").result_rows
    assert [c[0] for c in cols] == ["minute", "policy_version", "queries", "exposures", "clicks", "revenue", "ads_per_answer", "format_error_rate", "ctr", "reward_per_query"]
    assert cols[0][1] == "DateTime('UTC')"
    cols = client.query("SELECT name FROM system.columns WHERE database = 'llm_auction' AND table = 'revenue_by_policy' ORDER BY position").result_rows
    assert [c[0] for c in cols] == ["policy_version", "queries", "exposures", "clicks", "revenue", "revenue_per_query", "ads_per_answer", "format_error_rate", "ctr", "reward_per_query"]


def test_an_edited_applied_migration_is_refused(clickhouse_client):
    client = clickhouse_client
    client.command("INSERT INTO llm_auction.schema_migrations (version, name, checksum) VALUES (2, '0002_event_tables', 'not-the-file')")
    with pytest.raises(InfraError) as e:
        ddl.migrate(client)
    assert str(e.value) == "migration 0002_event_tables changed after it was applied to this warehouse; add a new migration instead of editing it"
    client.command("DROP DATABASE llm_auction SYNC")  # the fixture rebuilds it for the next test


def test_reads_on_an_unmigrated_warehouse_say_what_to_run(clickhouse_client):
    clickhouse_client.command("DROP DATABASE llm_auction SYNC")
    with pytest.raises(InfraError) as e:
        warehouse.revenue_by_policy(clickhouse_client)
    msg = str(e.value)
    assert msg.startswith("cannot read revenue_by_policy: the warehouse is not set up (") and msg.endswith("run `llm-auction warehouse migrate`")
    assert "\n" not in msg


def test_cli_migrate_and_status(clickhouse_client, clickhouse_url, monkeypatch, capsys):
    from llm_auction.cli import main
    from llm_auction.schemas.events import ClickEvent
    from llm_auction.schemas.settings import get_settings

    clickhouse_client.command("DROP DATABASE llm_auction SYNC")
    monkeypatch.setenv("LLMA_CLICKHOUSE_URL", clickhouse_url)
    get_settings.cache_clear()
    try:
        assert main(["warehouse", "migrate"]) == 0
        first = json.loads(capsys.readouterr().out)
        assert first == {"url": parse_url(clickhouse_url).safe(), "applied_now": ALL, "schema_version": len(ALL)}
        assert main(["warehouse", "migrate"]) == 0
        assert json.loads(capsys.readouterr().out)["applied_now"] == []
        clickhouse_client.command("SYSTEM STOP MERGES llm_auction.clicks")  # keep the two parts apart
        c = ClickEvent(event_id="c1", query_id="q1", ad_id="Ad-0001", clicked=True, policy_version="v1", user_id="u1", bid=9)
        warehouse.insert_clicks(clickhouse_client, [c])
        warehouse.insert_clicks(clickhouse_client, [c])
        assert main(["warehouse", "status"]) == 0
        status = json.loads(capsys.readouterr().out)
    finally:
        get_settings.cache_clear()
    assert [m["name"] for m in status["migrations"]] == ALL
    assert status["pending"] == []
    assert status["tables"]["clicks"] == {"stored": 2, "rows": 1, "parts": 2}
    assert status["tables"]["queries"] == {"stored": 0, "rows": 0, "parts": 0}


def test_cli_bad_url_is_one_line_exit_2(capsys):
    from llm_auction.cli import main

    assert main(["warehouse", "status", "--url", "ftp://x"]) == 2
    err = capsys.readouterr().err
    assert err == "llm-auction: error: unsupported ClickHouse URL scheme 'ftp' in ftp://x; use chdb:///abs/path or http(s)://host:port\n"


HOLD = """
import sys, time
import clickhouse_connect
c = clickhouse_connect.get_client(interface="chdb", path=sys.argv[1])
c.command("SELECT 1")
print("ready", flush=True)
time.sleep(60)
"""


def test_a_chdb_folder_held_by_another_process_is_explained(tmp_path):
    folder = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(InfraError) as e:
            get_client(f"chdb://{folder}")
        assert str(e.value) == (
            f"the embedded ClickHouse at {folder} is in use by process {proc.pid}; chdb lets one process open a data folder: "
            "stop that process, or point LLMA_CLICKHOUSE_URL at another folder or a ClickHouse server"
        )
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_second_chdb_folder_in_this_process_is_explained(clickhouse_session_client, clickhouse_url, tmp_path):
    if not clickhouse_url.startswith("chdb:"):
        pytest.skip("the session backend is a server, not the embedded engine")
    other = tmp_path / "other"
    with pytest.raises(InfraError) as e:
        get_client(f"chdb://{other}")
    assert str(e.value) == (
        f"this process already runs the embedded ClickHouse at {parse_url(clickhouse_url).path}; chdb hosts one data folder per process, "
        f"so {other} cannot be opened beside it (use one LLMA_CLICKHOUSE_URL per process)"
    )
    # while a second client on the session's own folder is fine
    again = get_client(clickhouse_url)
    try:
        assert again.query("SELECT 1").result_rows == [(1,)]
    finally:
        again.close()


def test_inserts_on_an_unmigrated_warehouse_say_what_to_run(clickhouse_client):
    clickhouse_client.command("DROP DATABASE llm_auction SYNC")
    click = ClickEvent(query_id="q1", ad_id="Ad-0001", clicked=True, policy_version="v1", user_id="u1", bid=5)
    with pytest.raises(InfraError) as e:
        warehouse.insert_clicks(clickhouse_client, [click])
    msg = str(e.value)
    assert msg.startswith("cannot insert 1 rows into llm_auction.clicks: the warehouse is not set up (") and msg.endswith("run `llm-auction warehouse migrate`")
    assert "\n" not in msg
