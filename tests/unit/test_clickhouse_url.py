"""ClickHouse URL handling and error lines: no engine needed (a refused port is a closed socket)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from llm_auction.infra.clickhouse import describe_error, get_client, one_line, parse_url
from llm_auction.infra.errors import InfraError


def test_chdb_url_is_an_absolute_folder():
    u = parse_url("chdb:///var/lib/llma/clickhouse")
    assert (u.scheme, u.path, u.embedded) == ("chdb", Path("/var/lib/llma/clickhouse"), True)
    assert u.safe() == "chdb:///var/lib/llma/clickhouse"


def test_server_url_fields_defaults_and_redaction():
    u = parse_url("http://alice:s%40cret@ch.example:8124/analytics")
    assert (u.scheme, u.host, u.port, u.username, u.password, u.database) == ("http", "ch.example", 8124, "alice", "s@cret", "analytics")
    assert u.safe() == "http://alice:***@ch.example:8124/analytics"
    assert parse_url("http://localhost").port == 8123
    assert parse_url("https://ch.example/").port == 8443
    assert parse_url("https://ch.example/").database is None


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://x", "unsupported ClickHouse URL scheme 'ftp' in ftp://x; use chdb:///abs/path or http(s)://host:port"),
        ("localhost:8123", "unsupported ClickHouse URL scheme 'localhost' in localhost:8123; use chdb:///abs/path or http(s)://host:port"),
        ("/just/a/path", "unsupported ClickHouse URL scheme none in /just/a/path; use chdb:///abs/path or http(s)://host:port"),
        ("clickhouse://u:pw@h:9000/db", "unsupported ClickHouse URL scheme 'clickhouse' in clickhouse://u:***@h:9000/db; use chdb:///abs/path or http(s)://host:port"),
        ("chdb://relative/folder", "malformed ClickHouse URL chdb://relative/folder: an embedded URL is chdb:///abs/path (three slashes, absolute folder); check LLMA_CLICKHOUSE_URL"),
        ("http://h:port/db", "malformed ClickHouse URL http://h:port/db: the port is not a number in 1..65535; check LLMA_CLICKHOUSE_URL"),
        ("http://h:99999", "malformed ClickHouse URL http://h:99999: the port is not a number in 1..65535; check LLMA_CLICKHOUSE_URL"),
        ("http://:8123", "malformed ClickHouse URL http://:8123: no host; check LLMA_CLICKHOUSE_URL"),
        ("http://h:8123/a/b", "malformed ClickHouse URL http://h:8123/a/b: expected http(s)://[user:pass@]host[:port][/database]; check LLMA_CLICKHOUSE_URL"),
        ("", "LLMA_CLICKHOUSE_URL is empty; use chdb:///abs/path or http(s)://host:port"),
    ],
)
def test_bad_urls_give_one_clear_line(url, message):
    with pytest.raises(InfraError) as e:
        get_client(url)
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


def test_refused_port_gives_one_line_without_the_password():
    port = _closed_port()
    with pytest.raises(InfraError) as e:
        get_client(f"http://bob:hunter2@127.0.0.1:{port}/db")
    assert str(e.value) == f"ClickHouse at http://bob:***@127.0.0.1:{port}/db refused the connection; check LLMA_CLICKHOUSE_URL"


def test_driver_errors_become_one_line():
    msg = "HTTPDriver for http://x received ClickHouse error code 60\n Code: 60. DB::Exception: Unknown table expression identifier 'llm_auction.clicks'. (UNKNOWN_TABLE) (version 26.9.2.1)\n"
    assert one_line(msg) == "Code: 60. DB::Exception: Unknown table expression identifier 'llm_auction.clicks'. (UNKNOWN_TABLE)"
    err = describe_error(RuntimeError(msg), "read revenue_by_policy")
    assert str(err).startswith("cannot read revenue_by_policy: the warehouse is not set up (Code: 60.")
    assert str(err).endswith("run `llm-auction warehouse migrate`")
    assert str(describe_error(RuntimeError("Code: 241. DB::Exception: Memory limit exceeded"), "insert 5 rows into llm_auction.clicks")) == (
        "cannot insert 5 rows into llm_auction.clicks: Code: 241. DB::Exception: Memory limit exceeded"
    )
    assert len(one_line("x" * 1000)) == 300
