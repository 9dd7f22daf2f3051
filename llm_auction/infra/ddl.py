"""Versioned warehouse DDL: ``migrate(client)`` applies ``infra/migrations/NNNN_name.sql`` in order, once.

Applied versions are recorded (with a checksum of the file) in ``llm_auction.schema_migrations``;
a second run applies nothing. Editing a migration that was already applied is refused: add a new
one instead, so every warehouse reaches the same schema by the same steps.

Deduplication: why reads go through FINAL instead of insert-time tricks
-----------------------------------------------------------------------
Delivery is at least once: the sink commits Kafka offsets after its insert returns, so a crash
or a rebalance re-inserts a batch, and after a restart the replay is *re-batched* (the consumer
polls from the committed offset with whatever batch boundaries the broker hands it). Two ways
to keep such a replay from counting twice were weighed:

- Insert deduplication (``insert_deduplication_token`` or block hashes, with
  ``non_replicated_deduplication_window`` and ``deduplicate_blocks_in_dependent_materialized_views``)
  drops a *block identical* to one seen before, and materialized views fire per inserted block.
  A re-batched replay is not identical (other boundaries, some events old, some new), so its
  old events would land again and every incremental aggregate fed by a view would count them
  twice. It also depends on a window of remembered hashes per table.
- ReplacingMergeTree keyed by event identity, with every count read from deduplicated rows:
  correct for any overlap, any batch shape, any number of replays, on a server and in chdb alike.

The warehouse uses the second. The event tables are ``ReplacingMergeTree ORDER BY (ts, event_id)``
(a replay repeats both exactly: events are frozen JSON), and the aggregate views
(``revenue_per_minute``, ``revenue_by_policy``) aggregate ``FINAL`` rows at read time, so there is
no pre-aggregated state that a duplicate could have reached. FINAL stays cheap because ts leads
the key: a time-ordered stream gives batches disjoint key ranges, and ClickHouse merges at read
time only the ranges that overlap (the replayed ones); ``bench/warehouse.py`` measures it. (It
also relies on ``optimize_on_insert``, on by default: an inserted part is born deduplicated, at
level 1, which is what lets FINAL read it without merging; turning it off makes FINAL merge
everything.) A
duplicate shares its original's ts, hence its day partition. ``impressions`` joins FINAL rows too.
``tests/integration/test_warehouse.py`` proves it: re-inserting a 100,000-row batch, and a
re-sliced overlapping replay, leave every view unchanged.

The identity of an event is therefore (ts, event_id). A Kafka replay repeats both. A producer that
*re-creates* an event on its own replay must repeat both too (derive the id, and take ts from its
input rather than the clock): the same id with a new ts is a new row, as it would be anyway once
the new ts fell on another day's partition. Keying on event_id alone would lift that rule for
same-day duplicates, at a price measured here: every part then overlaps every other, and the
per-policy FINAL read of 1M clicks went from about 15 ms to about 330 ms on 2 cores.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

from llm_auction.infra.clickhouse import describe_error
from llm_auction.infra.errors import InfraError
from llm_auction.logs import log_event

log = logging.getLogger("llm_auction.infra.ddl")

DATABASE = "llm_auction"
TABLES = ("queries", "responses", "clicks")
VIEWS = ("revenue_per_minute", "revenue_by_policy", "impressions")
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_END = re.compile(r";[ \t]*$", re.M)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # "0002_event_tables"
    sql: str
    checksum: str

    def statements(self) -> list[str]:
        """The file's statements: each ends with ``;`` at the end of a line; comment-only chunks are skipped."""
        out = []
        for chunk in _END.split(self.sql):
            body = "\n".join(ln for ln in chunk.splitlines() if not ln.strip().startswith("--")).strip()
            if body:
                out.append(body)
        return out


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    folder = resources.files("llm_auction.infra") / "migrations"
    found = []
    for entry in folder.iterdir():
        m = _FILE.match(entry.name)
        if not m:
            continue
        sql = entry.read_text(encoding="utf-8")
        found.append(Migration(int(m.group(1)), entry.name[:-4], sql, hashlib.sha256(sql.encode()).hexdigest()))
    found.sort(key=lambda mg: mg.version)
    versions = [mg.version for mg in found]
    if len(set(versions)) != len(versions):
        raise InfraError(f"two migrations share a version number in {folder}")
    return found


def applied(client) -> dict[int, dict]:
    """Applied migrations by version ({} on a warehouse never migrated)."""
    try:
        exists = client.query(
            "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'schema_migrations'",
            parameters={"db": DATABASE},
        ).result_rows[0][0]
        if not exists:
            return {}
        rows = client.query(f"SELECT version, name, checksum, applied_at FROM {DATABASE}.schema_migrations FINAL ORDER BY version", tz_mode="aware").named_results()
        return {int(r["version"]): r for r in rows}
    except InfraError:
        raise
    except Exception as e:  # noqa: BLE001 - driver errors become one line
        raise describe_error(e, "read the applied migrations") from None


def migrate(client) -> list[str]:
    """Apply the pending migrations in order; return their names ([] when up to date)."""
    done = applied(client)
    now: list[str] = []
    for mg in migrations():
        prior = done.get(mg.version)
        if prior is not None:
            if prior["checksum"] != mg.checksum:
                raise InfraError(
                    f"migration {mg.name} changed after it was applied to this warehouse; add a new migration instead of editing it"
                )
            continue
        for stmt in mg.statements():
            try:
                client.command(stmt)
            except Exception as e:  # noqa: BLE001
                raise describe_error(e, f"apply migration {mg.name}") from None
        try:
            client.command(
                f"INSERT INTO {DATABASE}.schema_migrations (version, name, checksum) VALUES ({{v:UInt32}}, {{n:String}}, {{c:String}})",
                parameters={"v": mg.version, "n": mg.name, "c": mg.checksum},
            )
        except Exception as e:  # noqa: BLE001
            raise describe_error(e, f"record migration {mg.name}") from None
        log_event(log, "migration applied", migration=mg.name)
        now.append(mg.name)
    if not now:
        log_event(log, "warehouse schema up to date", version=max(done, default=0))
    return now


def pending(client) -> list[str]:
    """Names of the shipped migrations not yet applied."""
    done = applied(client)
    return [mg.name for mg in migrations() if mg.version not in done]
