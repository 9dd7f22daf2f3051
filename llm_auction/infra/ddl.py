"""Versioned warehouse DDL: ``migrate(client)`` applies ``infra/migrations/NNNN_name.sql`` in order, once.

Applied versions are recorded (with a checksum of the file) in ``llm_auction.schema_migrations``;
a second run applies nothing. Editing a migration that was already applied is refused: add a new
one instead, so every warehouse reaches the same schema by the same steps.

Deduplication contract. Delivery is at least once, and a replay after a restart is *re-batched*
(other batch boundaries), so insert-block deduplication (``insert_deduplication_token``, block
hashes), which only drops a block identical to one seen before, cannot catch it; materialized
views would then count the replayed events twice. Instead:

- every event table is ``ReplacingMergeTree ORDER BY (ts, event_id)``: a Kafka replay repeats
  both exactly, so a duplicate collapses onto its original (and lands in the same day partition);
- every aggregate (``revenue_per_minute``, ``revenue_by_policy``, ``impressions``) reads ``FINAL``
  rows at query time: there is no pre-aggregated state a duplicate could reach.

FINAL stays cheap because ``ts`` leads the key: a time-ordered stream gives batches disjoint key
ranges, so only replayed ranges need merging at read time (this relies on ``optimize_on_insert``,
on by default). Hence an event's identity is ``(ts, event_id)``: a producer that re-creates an
event when it replays its own input must derive the id *and* take ts from its input, not the
clock. Keying on ``event_id`` alone would make every part overlap every other and FINAL reads far
dearer (figures in docs/benchmarks.md). ``tests/integration/test_warehouse.py`` checks that
re-inserting a batch, and a re-sliced overlapping replay, leave every view unchanged.
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
