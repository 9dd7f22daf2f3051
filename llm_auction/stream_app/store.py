"""The stream app's ClickHouse side: joined impressions and announced pCTR versions (migration 0006).

``llm_auction.stream_impressions`` holds every impression the app joined, keyed by (the answer's ts,
query_id, policy_version, ad_id): a worker that joins an impression again after a restart writes
the same key, and every read goes through FINAL, so nothing counts twice. Its row is
:class:`~llm_auction.stream_app.join.Impression` plus ``joined_at``: :data:`IMPRESSIONS_SCHEMA` is
derived from the dataclass, and a test checks migration 0006's columns against it.

Why a table beside the warehouse's ``impressions`` view (migrations 0003/0004), which joins the
same responses and clicks: the two answer different questions. The view is the sink's tables
joined at read time: an exposed ad has a row once its decision has landed, and never otherwise;
``pctr train --from-clickhouse`` reads it, with no stream app running. The table is what the
stream app decided online: an exposed ad without a click event after ``max_wait_s`` is labeled
not clicked, and the simulator's ``click_probability`` travels along for the oracle metrics; its
retraining windows and watermark are counted on it. With the embedded engine it also lives in the
stream app's own data folder (chdb lets one process open a folder), where the view's tables are
not.
``llm_auction.stream_pctr_versions`` holds one row per PctrVersion event the app sent, with the
impression count it trained at: the retraining watermark, read back by a restarted worker.

chdb (the embedded engine) hosts one data folder per process and lets one process open a folder:
the stream app opens its own client from ``LLMA_STREAM_CLICKHOUSE_URL`` (default
``LLMA_CLICKHOUSE_URL``), so with chdb it needs a folder no other process has open (or a server).
The driver is not assumed thread-safe: every call here runs under one lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa

from llm_auction.infra.clickhouse import describe_error
from llm_auction.infra.ddl import DATABASE
from llm_auction.infra.warehouse import TS, insert_arrow
from llm_auction.stream_app.join import Impression

log = logging.getLogger(__name__)

IMPRESSIONS_TABLE = "stream_impressions"
VERSIONS_TABLE = "stream_pctr_versions"
IMPRESSION_COLUMNS = tuple(f.name for f in fields(Impression))  # the row as the join makes it, and as the window reads it back
_NOT_STRINGS = {"ts": TS, "bid": pa.uint8(), "clicked": pa.uint8(), "click_probability": pa.float64()}
IMPRESSIONS_SCHEMA = pa.schema([(name, _NOT_STRINGS.get(name, pa.string())) for name in IMPRESSION_COLUMNS] + [("joined_at", TS)])


def impressions_table(rows: Sequence[Impression | dict], joined_at: datetime | None = None) -> pa.Table:
    """Arrow rows for ``stream_impressions`` (``ts`` is the answer's, epoch seconds in the join)."""
    dicts = [r.to_dict() if isinstance(r, Impression) else r for r in rows]
    now = int((joined_at or datetime.now(timezone.utc)).timestamp() * 1000)
    cols = {name: [d.get(name) for d in dicts] for name in IMPRESSION_COLUMNS}
    cols["ts"] = pa.array([int(round(t * 1000)) for t in cols["ts"]], pa.int64()).cast(TS)
    cols["clicked"] = [int(bool(c)) for c in cols["clicked"]]
    cols["joined_at"] = pa.array([now] * len(dicts), pa.int64()).cast(TS)
    return pa.Table.from_pydict(cols, schema=IMPRESSIONS_SCHEMA)


class StreamStore:
    """Reads and writes of the stream app, serialized by a lock (one client, several threads)."""

    def __init__(self, client, app_id: str):
        self.client = client
        self.app_id = app_id
        self.lock = threading.Lock()

    def insert_impressions(self, rows: Sequence[Impression | dict]) -> int:
        if not rows:
            return 0
        table = impressions_table(rows)
        with self.lock:
            return insert_arrow(self.client, IMPRESSIONS_TABLE, table)

    def _scalar(self, sql: str, doing: str, params: dict | None = None):
        try:
            with self.lock:
                return self.client.query(sql, parameters=params or {}).result_rows[0][0]
        except Exception as e:  # noqa: BLE001 - driver errors become one line
            raise describe_error(e, doing) from None

    def count_impressions(self) -> int:
        return int(self._scalar(f"SELECT count() FROM {DATABASE}.{IMPRESSIONS_TABLE} FINAL", "count stream impressions"))

    def count_impressions_of(self, policy_version: str) -> int:
        """Impressions of answers ``policy_version`` wrote (the IRPO trigger's count of the stable policy)."""
        sql = f"SELECT count() FROM {DATABASE}.{IMPRESSIONS_TABLE} FINAL WHERE policy_version = {{v:String}}"
        return int(self._scalar(sql, "count stream impressions of a policy version", {"v": policy_version}))

    def window(self, rows: int) -> pd.DataFrame:
        """The most recent ``rows`` impressions, oldest first, in a deterministic order (the same
        data gives the same fit, hence the same ONNX bytes: the registry's dedup relies on it)."""
        sql = (
            f"SELECT * FROM (SELECT {', '.join(IMPRESSION_COLUMNS)} "
            f"FROM {DATABASE}.{IMPRESSIONS_TABLE} FINAL ORDER BY ts DESC, query_id DESC, ad_id DESC LIMIT {{n:UInt64}}) "
            f"ORDER BY ts, query_id, ad_id"
        )
        try:
            with self.lock:
                df = self.client.query_arrow(sql, parameters={"n": int(rows)}).to_pandas()
        except Exception as e:  # noqa: BLE001
            raise describe_error(e, "read the stream impressions window") from None
        df["clicked"] = df["clicked"].astype(bool)
        return df

    def watermark(self) -> int:
        """Impressions counted when this app last trained a version it announced (0: never)."""
        return int(self._scalar(f"SELECT max(impressions_total) FROM {DATABASE}.{VERSIONS_TABLE} FINAL WHERE app_id = {{a:String}}", "read the retrain watermark", {"a": self.app_id}) or 0)

    def announced(self, event_id: str) -> bool:
        sql = f"SELECT count() FROM {DATABASE}.{VERSIONS_TABLE} FINAL WHERE app_id = {{a:String}} AND event_id = {{e:String}}"
        return int(self._scalar(sql, "read announced versions", {"a": self.app_id, "e": event_id})) > 0

    def record_announcement(self, event_id: str, version: str, sha256: str, promoted: bool, impressions_total: int, window_rows: int) -> None:
        sql = (
            f"INSERT INTO {DATABASE}.{VERSIONS_TABLE} (app_id, event_id, version, sha256, promoted, impressions_total, window_rows) "
            "VALUES ({a:String}, {e:String}, {v:String}, {s:String}, {p:UInt8}, {t:UInt64}, {w:UInt64})"
        )
        params = {"a": self.app_id, "e": event_id, "v": version, "s": sha256, "p": int(promoted), "t": int(impressions_total), "w": int(window_rows)}
        try:
            with self.lock:
                self.client.command(sql, parameters=params)
        except Exception as e:  # noqa: BLE001
            raise describe_error(e, "record an announced pCTR version") from None

    def announcements(self) -> list[dict]:
        sql = f"SELECT * FROM {DATABASE}.{VERSIONS_TABLE} FINAL WHERE app_id = {{a:String}} ORDER BY announced_at"
        with self.lock:
            return list(self.client.query(sql, parameters={"a": self.app_id}).named_results())
