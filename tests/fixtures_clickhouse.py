"""Pytest plugin: a real ClickHouse for the session, chosen in this order:

1. ``LLMA_CLICKHOUSE_URL`` if set (a running server or chdb folder; it must be disposable:
   ``clickhouse_client`` empties the ``llm_auction`` tables before every test);
2. testcontainers' ClickHouse server when a Docker engine answers within a second or two;
3. embedded ClickHouse (chdb) in a fresh temporary folder: the default here.

chdb hosts one engine per process and one process per folder, so the session holds a single
client and every test shares it: ``clickhouse_client`` hands out that client on a migrated,
emptied warehouse (tests run one at a time, so emptying is isolation enough). Code under test
that opens its own client must use ``clickhouse_url``, the same folder; any other chdb folder
fails in this process by design.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from docker_probe import docker_answers

_choice: dict[str, str] = {}


def _backend() -> str:
    """Decide once per session which backend serves ``clickhouse_url`` (cheap; starts nothing)."""
    if "backend" not in _choice:
        if os.environ.get("LLMA_CLICKHOUSE_URL"):
            _choice["backend"] = "env"
        elif docker_answers():
            _choice["backend"] = "testcontainers"
        else:
            _choice["backend"] = "chdb"
            _choice["path"] = tempfile.mkdtemp(prefix="llma-test-clickhouse-")
    return _choice["backend"]


def pytest_report_header(config) -> str:
    backend = _backend()
    if backend == "env":
        from llm_auction.infra.clickhouse import parse_url
        from llm_auction.infra.errors import InfraError

        try:
            shown = parse_url(os.environ["LLMA_CLICKHOUSE_URL"]).safe()
        except InfraError:
            shown = "unparsable"
        return f"clickhouse backend: env LLMA_CLICKHOUSE_URL ({shown})"
    if backend == "testcontainers":
        return "clickhouse backend: testcontainers (clickhouse-server; started on first use)"
    return f"clickhouse backend: chdb ({_choice['path']}; opened on first use)"


def pytest_unconfigure(config) -> None:
    path = _choice.get("path")
    if path:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def clickhouse_url() -> Iterator[str]:
    """A URL for a real ClickHouse that lives for the whole session."""
    backend = _backend()
    if backend == "env":
        yield os.environ["LLMA_CLICKHOUSE_URL"]
    elif backend == "testcontainers":
        try:
            from testcontainers.community.clickhouse import ClickHouseContainer
        except ImportError:  # older testcontainers
            from testcontainers.clickhouse import ClickHouseContainer

        image = os.environ.get("LLMA_TEST_CLICKHOUSE_IMAGE", "clickhouse/clickhouse-server:25.8")
        with ClickHouseContainer(image) as ch:
            host, port = ch.get_container_host_ip(), ch.get_exposed_port(8123)
            yield f"http://{ch.username}:{ch.password}@{host}:{port}/{ch.dbname}"
    else:
        yield f"chdb://{_choice['path']}"


@pytest.fixture(scope="session")
def clickhouse_session_client(clickhouse_url: str):
    """The session's one client, on a migrated warehouse (data accumulates across tests)."""
    from llm_auction.infra.clickhouse import get_client
    from llm_auction.infra.ddl import migrate

    client = get_client(clickhouse_url)
    migrate(client)
    yield client
    client.close()


def truncate_warehouse(client) -> None:
    """Empty every event table (the views read them, so they empty too) and let merges run again
    if a test stopped them; migrations stay recorded."""
    from llm_auction.infra.ddl import DATABASE, TABLES

    for table in TABLES:
        client.command(f"TRUNCATE TABLE IF EXISTS {DATABASE}.{table}")
        client.command(f"SYSTEM START MERGES {DATABASE}.{table}")


@pytest.fixture
def clickhouse_client(clickhouse_session_client):
    """The session client on a migrated, empty warehouse (re-migrated if a test dropped it)."""
    from llm_auction.infra.ddl import migrate

    migrate(clickhouse_session_client)
    truncate_warehouse(clickhouse_session_client)
    return clickhouse_session_client
