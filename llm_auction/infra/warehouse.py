"""Typed warehouse I/O: events in as columnar batches, metrics and training rows out.

Inserts turn a list of pydantic events into one Arrow table per call (chunked at
``CHUNK_ROWS``) and send it with :func:`insert_arrow`: one part per chunk instead of one per row,
which is what keeps ClickHouse fast (row-at-a-time inserts bloat parts; insert rates in
docs/benchmarks.md#warehouse). Inserting the same events again is harmless: the tables deduplicate by event id and
every read below counts deduplicated rows (see :mod:`llm_auction.infra.ddl`).

Reads select from the views (migrations 0003, 0004, 0008) or the per-answer query
(:func:`answer_rows`, summarized by :func:`policy_metrics`, :func:`arm_metrics` and, per user,
:func:`arm_users`), with bound
parameters only (``parameters=``); no SQL is ever built from event data. Revenue everywhere is
what the clicks paid: a click's ``price`` when its mechanism set one, else its bid (first price).
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from itertools import accumulate, chain
from operator import attrgetter
from typing import TYPE_CHECKING

import pyarrow as pa

from llm_auction.auction.reward import AD_COUNT_PENALTY, FORMAT_ERROR_PENALTY
from llm_auction.infra.clickhouse import describe_error
from llm_auction.infra.ddl import DATABASE
from llm_auction.logs import log_event
from llm_auction.schemas.candidates import Candidates
from llm_auction.schemas.events import ClickEvent, QueryEvent, ResponseEvent

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("llm_auction.infra.warehouse")

CHUNK_ROWS = 1_000_000
TS = pa.timestamp("ms", tz="UTC")  # every DateTime64(3, 'UTC') column, here and in the stream app's tables
_STRS = pa.list_(pa.string())

QUERIES_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("ts", TS),
        ("query_id", pa.string()),
        ("user_id", pa.string()),
        ("query", pa.string()),
        ("split", pa.string()),
        ("n_candidates", pa.uint16()),
        ("bids", pa.map_(pa.string(), pa.uint8())),
    ]
)
RESPONSES_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("ts", TS),
        ("query_id", pa.string()),
        ("policy_version", pa.string()),
        ("user_id", pa.string()),
        ("query", pa.string()),
        ("text", pa.string()),
        ("exposed_ad_ids", _STRS),
        ("n_ads", pa.uint16()),
        ("format_error", pa.uint8()),
        ("format_reasons", _STRS),
        ("shown_ad_ids", _STRS),
        ("latency_ms", pa.float64()),
        # migration 0008 (appended, as ALTER ADD COLUMN does; inserts name their columns anyway)
        ("generations", pa.uint16()),
        ("generated_tokens", pa.uint32()),
        ("generation_s", pa.float64()),
        ("prices", pa.list_(pa.float64())),
    ]
)
CLICKS_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("ts", TS),
        ("query_id", pa.string()),
        ("ad_id", pa.string()),
        ("clicked", pa.uint8()),
        ("reason", pa.string()),
        ("policy_version", pa.string()),
        ("user_id", pa.string()),
        ("bid", pa.uint8()),
        ("click_probability", pa.float64()),
        ("price", pa.float64()),  # migration 0008; null: the click pays its bid
    ]
)


# ---------------------------------------------------------------------------------------------
# events -> Arrow
#
# One C-level pass per event (operator.attrgetter) pulls every field at once, then each column is
# converted by pyarrow. A pass per column would touch every event once per column, and on a large
# batch each touch is a cache miss. The cyclic GC is paused while the batch's tuples are built:
# allocating a million tuples would otherwise trigger full collections over the whole heap.


@contextmanager
def _gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _columns(events: Sequence, paths: tuple[str, ...]) -> list[tuple]:
    if not events:
        return [() for _ in paths]
    with _gc_paused():
        return list(zip(*map(attrgetter(*paths), events)))


def _ts(values) -> pa.Array:
    # Event ts are aware UTC (schemas.events); the column keeps milliseconds (truncated).
    return pa.array(values, pa.timestamp("us", tz="UTC")).cast(TS, safe=False)


def _uint8(data: bytes | bytearray) -> pa.Array:
    """A UInt8 column whose buffer is ``data`` as is: one byte per value, no nulls, no conversion."""
    return pa.Array.from_buffers(pa.uint8(), len(data), [None, pa.py_buffer(data)])


def _flag(values) -> pa.Array:
    # A bool is an int: bytes() packs the flags into the UInt8 buffer as is (the fields are
    # never None), with no Arrow cast kernel per column.
    return _uint8(bytes(values))


def _table(schema: pa.Schema, arrays: list) -> pa.Table:
    return pa.Table.from_arrays(arrays, schema=schema)


def queries_table(events: Sequence[QueryEvent]) -> pa.Table:
    eid, ts, qid, uid, query, split, cands = _columns(events, ("event_id", "ts", "query_id", "user.user_id", "query", "split", "candidates"))
    return _table(
        QUERIES_SCHEMA,
        [
            pa.array(eid, pa.string()),
            _ts(ts),
            pa.array(qid, pa.string()),
            pa.array(uid, pa.string()),
            pa.array(query, pa.string()),
            pa.array(split, pa.string()),
            pa.array([len(c) for c in cands], pa.uint16()),
            _bids_map(cands),
        ],
    )


_AD_IDS = attrgetter("ad_ids")
_BIDS = attrgetter("bids")


def _bids_map(cands: Sequence[Candidates]) -> pa.MapArray:
    """The ``bids`` Map(String, UInt8) column: one map ad_id -> bid per event, in candidate order.

    Built as flat keys + flat values + offsets (``MapArray.from_arrays``) straight from the
    candidates' columns (``Candidates.ad_ids`` and ``.bids``, one byte per bid: the UInt8 buffer
    as is), so no candidate model is built or touched.
    """
    ids = list(chain.from_iterable(map(_AD_IDS, cands)))
    offsets = pa.array(list(accumulate(map(len, cands), initial=0)), pa.int32())
    return pa.MapArray.from_arrays(offsets, pa.array(ids, pa.string()), _uint8(b"".join(map(_BIDS, cands))))


_RESPONSE_PATHS = (
    "event_id", "ts", "query_id", "policy_version", "user.user_id", "query", "text", "exposed_ad_ids", "n_ads", "format_error", "format_reasons",
    "shown_ad_ids", "latency_ms", "generations", "generated_tokens", "generation_s", "prices",
)


def responses_table(events: Sequence[ResponseEvent]) -> pa.Table:
    eid, ts, qid, ver, uid, query, text, exposed, n_ads, ferr, reasons, shown, latency, gens, tokens, gen_s, prices = _columns(events, _RESPONSE_PATHS)
    return _table(
        RESPONSES_SCHEMA,
        [
            pa.array(eid, pa.string()),
            _ts(ts),
            pa.array(qid, pa.string()),
            pa.array(ver, pa.string()),
            pa.array(uid, pa.string()),
            pa.array(query, pa.string()),
            pa.array(text, pa.string()),
            pa.array(exposed, _STRS),
            pa.array(n_ads, pa.uint16()),
            _flag(ferr),
            pa.array(reasons, _STRS),
            pa.array(shown, _STRS),
            pa.array(latency, pa.float64()),
            pa.array(gens, pa.uint16()),
            pa.array(tokens, pa.uint32()),
            pa.array(gen_s, pa.float64()),
            pa.array(prices, pa.list_(pa.float64())),
        ],
    )


_CLICK_PATHS = ("event_id", "ts", "query_id", "ad_id", "clicked", "reason", "policy_version", "user_id", "bid", "click_probability", "price")


def clicks_table(events: Sequence[ClickEvent]) -> pa.Table:
    eid, ts, qid, ad, clicked, reason, ver, uid, bid, prob, price = _columns(events, _CLICK_PATHS)
    return _table(
        CLICKS_SCHEMA,
        [
            pa.array(eid, pa.string()),
            _ts(ts),
            pa.array(qid, pa.string()),
            pa.array(ad, pa.string()),
            _flag(clicked),
            pa.array(reason, pa.string()),
            pa.array(ver, pa.string()),
            pa.array(uid, pa.string()),
            pa.array(bid, pa.uint8()),
            pa.array(prob, pa.float64()),
            pa.array(price, pa.float64()),
        ],
    )


# ---------------------------------------------------------------------------------------------
# inserts


# An insert of at most this many rows runs with max_threads = 1: its pipeline has nothing to
# share between threads, and starting the engine's pool costs more than it saves.
SINGLE_THREAD_ROWS = 50_000


def insert_arrow(client, table: str, data: pa.Table) -> int:
    """Insert an Arrow table whose columns match ``llm_auction.<table>``; returns the row count.

    One clickhouse-connect ``insert_arrow`` call, on a server and on the embedded engine (chdb)
    alike, with ``async_insert = 0``: it returns once the rows are in a part, not in a buffer
    flushed later (chdb's default is 1), which is what the sink's "offsets committed after the
    insert returned" relies on.
    """
    settings = {"async_insert": 0, **({"max_threads": 1} if data.num_rows <= SINGLE_THREAD_ROWS else {})}
    if data.num_rows == 0:
        return 0
    t0 = time.perf_counter()
    try:
        client.insert_arrow(table, data, database=DATABASE, settings=settings)
    except Exception as e:  # noqa: BLE001 - driver errors become one line
        raise describe_error(e, f"insert {data.num_rows} rows into {DATABASE}.{table}") from None
    log_event(log, "warehouse insert", level=logging.DEBUG, table=table, rows=data.num_rows, ms=round((time.perf_counter() - t0) * 1000, 1))
    return data.num_rows


def _insert(client, table: str, events: Iterable, build) -> int:
    events = events if isinstance(events, Sequence) else list(events)
    n = 0
    for start in range(0, len(events), CHUNK_ROWS):
        n += insert_arrow(client, table, build(events[start : start + CHUNK_ROWS]))
    return n


def insert_queries(client, events: Iterable[QueryEvent]) -> int:
    """Insert query events (bids as a Map ad_id -> bid); returns the number of rows sent."""
    return _insert(client, "queries", events, queries_table)


def insert_responses(client, events: Iterable[ResponseEvent]) -> int:
    """Insert response events; returns rows sent."""
    return _insert(client, "responses", events, responses_table)


def insert_clicks(client, events: Iterable[ClickEvent]) -> int:
    """Insert click events (one per exposed ad, clicked or not); returns rows sent."""
    return _insert(client, "clicks", events, clicks_table)


# ---------------------------------------------------------------------------------------------
# reads


def _utc(dt: datetime) -> datetime:
    """Bind datetimes as aware UTC (a naive one is taken to be UTC already)."""
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _rows(client, sql: str, doing: str, parameters: dict | None = None) -> list[dict]:
    try:
        return list(client.query(sql, parameters=parameters or {}, tz_mode="aware").named_results())
    except Exception as e:  # noqa: BLE001
        raise describe_error(e, doing) from None


def revenue_by_policy(client) -> list[dict]:
    """One dict per policy version: queries, exposures, clicks, revenue (what the clicks paid: their
    price, else their bid), revenue_per_query, ads_per_answer, format_error_rate, ctr,
    reward_per_query (a ratio over zero is None)."""
    return _rows(client, f"SELECT * FROM {DATABASE}.revenue_by_policy ORDER BY policy_version", "read revenue_by_policy")


# What a click pays: its price when the mechanism set one (migration 0008), else its bid (first
# price, Eq. 7). The one definition of revenue in the reads below and in the revenue views.
CHARGE_SQL = "coalesce(price, toFloat64(bid))"

ANSWER_COLUMNS = (
    "policy_version", "query_id", "user_id", "revenue", "expected_revenue", "reward", "clicks", "n_ads", "format_error",
    "generations", "generated_tokens", "generation_s",
)


def _answers_sql(where: str, answered: str = "") -> str:
    """One row per answer (response, deduplicated) that ``where`` selects, applied to responses and
    clicks alike, and ``answered`` (when given) applied to responses only (a condition on when the
    answer was written: its clicks come later and must still count), with the columns of ``ANSWER_COLUMNS``: revenue (what its clicks pay, ``CHARGE_SQL``),
    expected revenue (the same charge x the simulator's click probability over its decisions: the
    revenue before the click draw, with far less variance; a decision without a probability counts
    0), Eq. 8's reward with the observed clicks (revenue - 10 n_ads^2 - 500 format_error), clicks,
    n_ads, format_error and the answer's cost (generations, generated_tokens, generation_s). An
    answer whose decisions have not arrived counts 0 revenue and 0 clicks.

    The per-answer definitions behind :func:`answer_rows` and, averaged, behind every arm metric, so
    an evaluation that resamples answers measures exactly what the loop and the controller report."""
    return f"""
    SELECT CAST(r.policy_version AS String) AS policy_version, r.query_id AS query_id, r.user_id AS user_id,
           ifNull(c.revenue, 0) AS revenue, ifNull(c.expected_revenue, 0) AS expected_revenue,
           ifNull(c.revenue, 0) - {AD_COUNT_PENALTY:g} * r.n_ads * r.n_ads - {FORMAT_ERROR_PENALTY:g} * r.format_error AS reward,
           toInt64(ifNull(c.clicks, 0)) AS clicks, r.n_ads AS n_ads, r.format_error AS format_error,
           r.generations AS generations, r.generated_tokens AS generated_tokens, r.generation_s AS generation_s
    FROM
    (
        SELECT query_id, policy_version, user_id, toInt64(n_ads) AS n_ads, toInt64(format_error) AS format_error,
               toInt64(generations) AS generations, toInt64(generated_tokens) AS generated_tokens, toFloat64(generation_s) AS generation_s
        FROM {DATABASE}.responses FINAL
        WHERE {where}{f" AND {answered}" if answered else ""}
    ) AS r
    LEFT JOIN
    (
        SELECT query_id, policy_version, sum({CHARGE_SQL} * clicked) AS revenue, sum(clicked) AS clicks,
               sum({CHARGE_SQL} * ifNull(click_probability, 0)) AS expected_revenue
        FROM {DATABASE}.clicks FINAL
        WHERE {where}
        GROUP BY query_id, policy_version
    ) AS c
    ON r.query_id = c.query_id AND r.policy_version = c.policy_version
"""


def _arm_metrics_sql(where: str) -> str:
    """Per policy version, the answers of :func:`_answers_sql` (``where``) summarized: queries, the
    means of revenue, expected revenue and reward (``*_per_query``), the reward's sample variance,
    CTR (clicks per exposed ad), ads per answer, format-error rate and the mean cost per answer
    (``generations_per_query``, ``generated_tokens_per_query``, ``generation_s_per_query``).
    The one query behind the loop's table and the rollout controller's arms."""
    return f"""
SELECT policy_version, count() AS queries, avg(revenue) AS revenue_per_query, avg(expected_revenue) AS expected_revenue_per_query,
       avg(reward) AS reward_per_query,
       varSamp(reward) AS reward_var, sum(clicks) / nullIf(sum(n_ads), 0) AS ctr, avg(n_ads) AS ads_per_answer,
       avg(format_error) AS format_error_rate, avg(generations) AS generations_per_query,
       avg(generated_tokens) AS generated_tokens_per_query, avg(generation_s) AS generation_s_per_query
FROM
({_answers_sql(where)})
GROUP BY policy_version
ORDER BY policy_version
"""


_RUN_TAGS = "multiSearchAny(query_id, {tags:Array(String)})"
POLICY_METRICS_SQL = _arm_metrics_sql(_RUN_TAGS)
ANSWERS_SQL = _answers_sql(_RUN_TAGS) + "ORDER BY policy_version, query_id\n"
ARMS_SQL = _arm_metrics_sql("policy_version IN {versions:Array(String)} AND ts >= {since:DateTime64(3, 'UTC')}")


def _run_tags(run_ids: Sequence[str]) -> dict:
    return {"tags": [f".{r}." for r in run_ids]}


def policy_metrics(client, run_ids: Sequence[str]) -> dict[str, dict]:
    """Per policy version, over the answers to the replays ``run_ids`` (a replay's query ids hold
    ``.<run_id>.``): queries, revenue_per_query (what the clicks paid: their price, else their
    bid), reward_per_query (Eq. 8 with the observed clicks: revenue - 10 n_ads^2 - 500
    format_error, as the rollout controller), reward_var, expected_revenue_per_query, ctr (clicks
    per exposed ad), ads_per_answer, format_error_rate, generations_per_query,
    generated_tokens_per_query, generation_s_per_query. Each ``*_per_query``, ads_per_answer and
    format_error_rate is the mean of that column of :func:`answer_rows` over the same run ids."""
    if not run_ids:
        return {}
    return {r.pop("policy_version"): r for r in _rows(client, POLICY_METRICS_SQL, "read policy metrics", _run_tags(run_ids))}


_ANSWER_DTYPES = {
    "policy_version": "object", "query_id": "object", "user_id": "object", "revenue": "float64", "expected_revenue": "float64",
    "reward": "float64", "clicks": "int64", "n_ads": "int64", "format_error": "int64", "generations": "int64",
    "generated_tokens": "int64", "generation_s": "float64",
}


def answer_rows(client, run_ids: Sequence[str]) -> "pd.DataFrame":
    """One row per answer to the replays ``run_ids`` (query ids holding ``.<run_id>.``, the answers
    :func:`policy_metrics` summarizes), ordered by (policy_version, query_id), with the columns of
    ``ANSWER_COLUMNS``: policy_version, query_id, user_id, revenue, expected_revenue, reward
    (floats), clicks, n_ads, format_error, generations, generated_tokens (ints), generation_s.

    For resampling: an evaluation that bootstraps these rows over queries uses the monitor's own
    per-answer definitions, and the mean of a column equals the matching ``policy_metrics`` figure.
    No run ids, or none answered, give an empty frame with these columns."""
    import pandas as pd

    if run_ids:
        try:
            df = client.query_arrow(ANSWERS_SQL, parameters=_run_tags(run_ids)).to_pandas()
        except Exception as e:  # noqa: BLE001
            raise describe_error(e, "read answer rows") from None
        if len(df):
            return df[list(ANSWER_COLUMNS)]
    return pd.DataFrame({c: pd.Series(dtype=_ANSWER_DTYPES[c]) for c in ANSWER_COLUMNS})


ANSWER_TEXTS_SQL = f"""
SELECT r.query_id AS query_id, r.policy_version AS policy_version, r.text AS text, r.exposed_ad_ids AS exposed_ad_ids,
       if(empty(r.prices), arrayMap(a -> toFloat64(q.bids[a]), r.exposed_ad_ids), r.prices) AS prices
FROM (SELECT query_id, policy_version, text, exposed_ad_ids, prices FROM {DATABASE}.responses FINAL WHERE {_RUN_TAGS}) AS r
LEFT JOIN (SELECT query_id, bids FROM {DATABASE}.queries FINAL WHERE {_RUN_TAGS}) AS q ON r.query_id = q.query_id
"""


def answer_texts(client, run_ids: Sequence[str]) -> dict[tuple[str, str], dict]:
    """The stored answers of the replays ``run_ids``, keyed by (query_id, policy_version): ``text``,
    ``exposed_ad_ids`` and ``prices`` (per exposed ad, what a click pays: the response's prices,
    else the query's bids), for rescoring the same answers under another click model."""
    if not run_ids:
        return {}
    rows = _rows(client, ANSWER_TEXTS_SQL, "read answer texts", _run_tags(run_ids))
    return {(r["query_id"], r["policy_version"]): {"text": r["text"], "exposed_ad_ids": list(r["exposed_ad_ids"]),
                                                   "prices": dict(zip(r["exposed_ad_ids"], map(float, r["prices"])))} for r in rows}


def arm_metrics(client, versions: Sequence[str], since: datetime) -> dict[str, dict]:
    """``policy_metrics``' columns per version of ``versions`` over its answers since ``since``
    (the rollout controller's arms); a version without answers is absent."""
    params = {"versions": list(versions), "since": _utc(since)}
    return {r.pop("policy_version"): r for r in _rows(client, ARMS_SQL, "read the rollout arms", params)}


# The rollout controller's arms per user: answers since the canary began (``since``) whose
# attribution window has closed (written before ``until``; filtered on responses only).
ARM_USERS_WHERE = "policy_version IN {versions:Array(String)} AND ts >= {since:DateTime64(3, 'UTC')}"
ARM_USERS_ANSWERED = "ts < {until:DateTime64(3, 'UTC')}"


def _arm_users_sql() -> str:
    """Per (policy_version, user_id), the answers of :func:`_answers_sql` summed: ``queries``,
    ``reward_sum``, ``reward_sq_sum`` (sum of squares, for the iid variance beside the per-user
    one), ``revenue_sum``, ``format_errors``, ``ads``. Sums per user, not per version, because the
    user is the randomization unit: the controller's variance is computed over users."""
    return f"""
SELECT policy_version, user_id, count() AS queries, sum(reward) AS reward_sum, sum(reward * reward) AS reward_sq_sum,
       sum(revenue) AS revenue_sum, sum(format_error) AS format_errors, sum(n_ads) AS ads
FROM
({_answers_sql(ARM_USERS_WHERE, ARM_USERS_ANSWERED)})
GROUP BY policy_version, user_id
ORDER BY policy_version, user_id
"""


ARM_USERS_SQL = _arm_users_sql()


def arm_users(client, versions: Sequence[str], since: datetime, until: datetime) -> dict[str, list[dict]]:
    """Per version of ``versions``, one dict per user (the columns of :func:`_arm_users_sql` and
    ``user_id``) over its answers written in ``[since, until)``; a version without answers is absent.

    ``until`` is the attribution cut-off (the controller passes now less
    ``LLMA_ROLLOUT_ATTRIBUTION_WINDOW_S``): an answer younger than that may still get clicks, and
    counted now it would count as no revenue. Clicks are not cut: a counted answer's clicks count
    whenever they arrived."""
    params = {"versions": list(versions), "since": _utc(since), "until": _utc(until)}
    out: dict[str, list[dict]] = {}
    for r in _rows(client, ARM_USERS_SQL, "read the rollout arms per user", params):
        out.setdefault(r.pop("policy_version"), []).append(r)
    return out


def revenue_per_minute(client, since: datetime | None = None) -> list[dict]:
    """One dict per (minute, policy version), oldest first; ``since`` keeps minutes from the one
    holding it onwards. ``minute`` is an aware UTC datetime."""
    where, params = "", {}
    if since is not None:
        where, params = "WHERE minute >= toStartOfMinute({since:DateTime64(3, 'UTC')})", {"since": _utc(since)}
    rows = _rows(client, f"SELECT * FROM {DATABASE}.revenue_per_minute {where} ORDER BY minute, policy_version", "read revenue_per_minute", params)
    for r in rows:
        r["minute"] = _utc(r["minute"])
    return rows


def totals(client) -> dict:
    """Deduplicated totals: queries, responses, click_events (decisions), clicks (clicked) as ints,
    and revenue (what the clicks paid: their price, else their bid) as a float."""
    sql = f"""
        SELECT
            (SELECT count() FROM {DATABASE}.queries FINAL) AS queries,
            (SELECT count() FROM {DATABASE}.responses FINAL) AS responses,
            c.click_events AS click_events,
            c.clicks AS clicks,
            c.revenue AS revenue
        FROM (SELECT count() AS click_events, sum(clicked) AS clicks, sum({CHARGE_SQL} * clicked) AS revenue FROM {DATABASE}.clicks FINAL) AS c
    """
    row = _rows(client, sql, "read warehouse totals")[0]
    return {k: float(v) if k == "revenue" else int(v) for k, v in row.items()}


def rollout_decisions(client, limit: int | None = None) -> list[dict]:
    """The rollout decisions (migration 0007, ``FINAL``: one row per decision), oldest first;
    ``limit`` keeps the newest ones. Each dict: decision_id, decided_at (aware UTC), stable_version,
    candidate_version (None when empty), candidate_share, state, reason, decided_by and evidence
    (the JSON decoded: version -> queries, revenue_per_query, reward_per_query, format_error_rate)."""
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    sql = (
        "SELECT decision_id, decided_at, stable_version, candidate_version, candidate_share, state, reason, decided_by, evidence "
        f"FROM {DATABASE}.rollout_decisions FINAL ORDER BY decided_at DESC, decision_id DESC"
    )
    params = {}
    if limit is not None:
        sql += " LIMIT {limit:UInt64}"
        params["limit"] = int(limit)
    rows = _rows(client, sql, "read rollout_decisions", params)
    for r in rows:
        r["decided_at"] = _utc(r["decided_at"])
        r["candidate_version"] = r["candidate_version"] or None
        try:
            r["evidence"] = json.loads(r["evidence"] or "{}")
        except ValueError:
            r["evidence"] = {}
    return rows[::-1]


def impressions(client, since: datetime | None = None, limit: int | None = None) -> "pd.DataFrame":
    """Labeled impressions for pCTR training, oldest first: query_id, ts, policy_version, user_id,
    query, text, ad_id, bid, clicked. ``since`` filters on the answer's ts; ``limit`` caps rows."""
    clauses, params = [], {}
    if since is not None:
        clauses.append("WHERE ts >= {since:DateTime64(3, 'UTC')}")
        params["since"] = _utc(since)
    clauses.append("ORDER BY ts, query_id, ad_id")
    if limit is not None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        clauses.append("LIMIT {limit:UInt64}")
        params["limit"] = int(limit)
    sql = f"SELECT * FROM {DATABASE}.impressions " + " ".join(clauses)
    try:
        # Arrow, then pandas: twice as fast as query_df for the text columns; ts stays UTC-aware.
        return client.query_arrow(sql, parameters=params).to_pandas()
    except Exception as e:  # noqa: BLE001
        raise describe_error(e, "read impressions") from None


def table_counts(client) -> dict[str, dict[str, int]]:
    """Per event table: rows stored (duplicates included until merged), rows after dedup, active parts."""
    out = {}
    for table in ("queries", "responses", "clicks"):
        row = _rows(
            client,
            f"""SELECT (SELECT count() FROM {DATABASE}.{table}) AS stored,
                       (SELECT count() FROM {DATABASE}.{table} FINAL) AS rows,
                       (SELECT count() FROM system.parts WHERE database = {{db:String}} AND table = {{t:String}} AND active) AS parts""",
            f"count rows of {DATABASE}.{table}",
            {"db": DATABASE, "t": table},
        )[0]
        out[table] = {k: int(v) for k, v in row.items()}
    return out
