"""Migration 0008 on a real engine: a mechanism's cost and per-click prices are stored, revenue is
what the clicks paid (their price, else their bid) in the views and the arm metrics alike, the
per-answer rows are what the arm metrics average, and a warehouse migrated before 0008 (with its
rows) moves to it, once, reading its older rows as first price, one generation."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from llm_auction.consumers.service import Item
from llm_auction.consumers.sink import SinkHandler
from llm_auction.infra import ddl, warehouse
from llm_auction.models.user_sim.base import Decision, build_click_events
from llm_auction.schemas import CandidateAd, ClickEvent, QueryEvent, ResponseEvent, UserProfile, decode, encode

pytestmark = pytest.mark.integration

T = datetime(2026, 5, 6, 9, 0, 0, tzinfo=timezone.utc)
ADS = [CandidateAd(ad_id=f"Ad-000{i}", title=f"Ad {i}", category="c", bid=b) for i, b in zip(range(1, 5), (5, 17, 33, 60))]
USERS = [UserProfile(user_id=f"u{i}", info="a user", interests=["x"]) for i in range(4)]


def answer(qid: str, version: str, exposed: list[str], decisions: dict[str, tuple[bool, float | None]], *, user: int = 0, seconds: int = 0, **fields):
    """A response to ``qid`` and its clicks (build_click_events, as the user simulator does), sent
    through the codec as the sink receives them."""
    q = QueryEvent(query_id=qid, user=USERS[user], query=f"question {qid}", candidates=ADS, ts=T)
    r = ResponseEvent.for_query(q, event_id=f"r-{qid}-{version}", policy_version=version, text=f"answer {qid}", exposed_ad_ids=exposed,
                                n_ads=len(exposed), ts=T + timedelta(seconds=seconds), **fields)
    clicks = build_click_events(r, {a: Decision(c, "why", p) for a, (c, p) in decisions.items()})
    return [decode(encode(r), ResponseEvent)] + [decode(encode(c), ClickEvent) for c in clicks]


def older(event) -> dict:
    """``event`` as a schema-version-5 producer wrote it: without the fields version 6 added."""
    d = json.loads(encode(event))
    for field in ("generations", "generated_tokens", "generation_s", "prices", "price"):
        d.pop(field, None)
    return {**d, "schema_version": 5}


def old_answer(qid: str, version: str, ad: str, clicked: bool, p: float | None, *, seconds: int = 0):
    r, *clicks = answer(qid, version, [ad], {ad: (clicked, p)}, seconds=seconds)
    return [decode(json.dumps(older(r)), ResponseEvent)] + [decode(json.dumps(older(c)), ClickEvent) for c in clicks]


def sink(client, events) -> None:
    SinkHandler(client).handle([Item(record=None, event=e) for e in events])


def traffic():
    """Answers of three kinds, with hand-computed figures (revenue, expected revenue, reward):

    - ``slot`` sets prices below the bids (a second-price auction):
      s1 exposes Ad-0001 (bid 5, price 3.5, clicked, p 0.4) and Ad-0002 (bid 17, price 2.25, not
      clicked, p 0.5): revenue 3.5, expected 1.4 + 1.125, reward 3.5 - 40;
      s2 exposes Ad-0003 (bid 33, price 10, clicked, p 0.2): revenue 10, expected 2, reward 0;
    - ``mosaic:4`` is first price (no prices) and costs four generations:
      m1 exposes Ad-0002 (clicked, p 0.6): revenue 17, expected 10.2, reward 7;
      m2 exposes nothing with a format error: revenue 0, reward -500;
    - ``v-old`` was written by a version-5 producer (no cost, no prices):
      o1 exposes Ad-0004 (bid 60, clicked, no probability): revenue 60, expected 0, reward 50;
      o2 exposes Ad-0001 (not clicked, p 0.5): revenue 0, expected 2.5, reward -10.
    Query ids hold ``.run9.`` but for o2 (``.run5.``), and one answer of another run (``.run10.``).
    """
    return [
        *answer("a.run9.s1", "slot", ["Ad-0001", "Ad-0002"], {"Ad-0001": (True, 0.4), "Ad-0002": (False, 0.5)}, user=1,
                prices=[3.5, 2.25], generations=1, generated_tokens=120, generation_s=0.5),
        *answer("a.run9.s2", "slot", ["Ad-0003"], {"Ad-0003": (True, 0.2)}, user=2, seconds=70, prices=[10.0], generated_tokens=80, generation_s=0.25),
        *answer("a.run9.m1", "mosaic:4", ["Ad-0002"], {"Ad-0002": (True, 0.6)}, generations=4, generated_tokens=400, generation_s=2.0),
        *answer("a.run9.m2", "mosaic:4", [], {}, user=3, format_error=True, format_reasons=["bad marker"], generations=4, generated_tokens=300, generation_s=1.5),
        *old_answer("a.run9.o1", "v-old", "Ad-0004", True, None),
        *old_answer("a.run5.o2", "v-old", "Ad-0001", False, 0.5),
        *answer("a.run10.x1", "slot", ["Ad-0004"], {"Ad-0004": (True, 0.9)}, prices=[1.0], generations=9),
    ]


WANT_ANSWERS = [  # policy_version, query_id, user_id, revenue, expected_revenue, reward, clicks, n_ads, format_error, generations, generated_tokens, generation_s
    ("mosaic:4", "a.run9.m1", "u0", 17.0, 10.2, 7.0, 1, 1, 0, 4, 400, 2.0),
    ("mosaic:4", "a.run9.m2", "u3", 0.0, 0.0, -500.0, 0, 0, 1, 4, 300, 1.5),
    ("slot", "a.run9.s1", "u1", 3.5, 2.525, -36.5, 1, 2, 0, 1, 120, 0.5),
    ("slot", "a.run9.s2", "u2", 10.0, 2.0, 0.0, 1, 1, 0, 1, 80, 0.25),
    ("v-old", "a.run5.o2", "u0", 0.0, 2.5, -10.0, 0, 1, 0, 1, 0, 0.0),
    ("v-old", "a.run9.o1", "u0", 60.0, 0.0, 50.0, 1, 1, 0, 1, 0, 0.0),
]


def test_prices_and_costs_round_trip_through_the_sink_tables(clickhouse_client):
    events = traffic()
    sink(clickhouse_client, events)
    sink(clickhouse_client, events)  # a replay: kept once
    rows = clickhouse_client.query(
        "SELECT query_id, policy_version, exposed_ad_ids, generations, generated_tokens, generation_s, prices FROM llm_auction.responses FINAL ORDER BY query_id"
    ).result_rows
    assert rows == [
        ("a.run10.x1", "slot", ["Ad-0004"], 9, 0, 0.0, [1.0]),
        ("a.run5.o2", "v-old", ["Ad-0001"], 1, 0, 0.0, []),
        ("a.run9.m1", "mosaic:4", ["Ad-0002"], 4, 400, 2.0, []),
        ("a.run9.m2", "mosaic:4", [], 4, 300, 1.5, []),
        ("a.run9.o1", "v-old", ["Ad-0004"], 1, 0, 0.0, []),
        ("a.run9.s1", "slot", ["Ad-0001", "Ad-0002"], 1, 120, 0.5, [3.5, 2.25]),
        ("a.run9.s2", "slot", ["Ad-0003"], 1, 80, 0.25, [10.0]),
    ]
    clicks = clickhouse_client.query("SELECT query_id, ad_id, bid, price, clicked FROM llm_auction.clicks FINAL ORDER BY query_id, ad_id").result_rows
    assert clicks == [
        ("a.run10.x1", "Ad-0004", 60, 1.0, 1),
        ("a.run5.o2", "Ad-0001", 5, None, 0),
        ("a.run9.m1", "Ad-0002", 17, None, 1),
        ("a.run9.o1", "Ad-0004", 60, None, 1),
        ("a.run9.s1", "Ad-0001", 5, 3.5, 1),
        ("a.run9.s1", "Ad-0002", 17, 2.25, 0),
        ("a.run9.s2", "Ad-0003", 33, 10.0, 1),
    ]


def test_revenue_is_what_the_clicks_paid_in_every_view_and_total(clickhouse_client):
    sink(clickhouse_client, traffic())
    by_policy = {r["policy_version"]: r for r in warehouse.revenue_by_policy(clickhouse_client)}
    # slot: its prices (3.5 + 10 + 1), not its bids (5 + 33 + 60); mosaic and the older answers: their bids
    assert {v: r["revenue"] for v, r in by_policy.items()} == {"mosaic:4": 17.0, "slot": 14.5, "v-old": 60.0}
    assert by_policy["slot"]["revenue_per_query"] == pytest.approx(14.5 / 3)
    assert by_policy["slot"]["reward_per_query"] == pytest.approx((14.5 - 40 - 10 - 10) / 3)
    assert by_policy["mosaic:4"]["reward_per_query"] == pytest.approx((17 - 10 - 500) / 2)
    per_minute = warehouse.revenue_per_minute(clickhouse_client)
    assert {(m["minute"], m["policy_version"]): m["revenue"] for m in per_minute} == {
        (T, "mosaic:4"): 17.0, (T, "slot"): 4.5, (T + timedelta(minutes=1), "slot"): 10.0, (T, "v-old"): 60.0,
    }
    assert warehouse.totals(clickhouse_client) == {"queries": 0, "responses": 7, "click_events": 7, "clicks": 5, "revenue": 91.5}
    # the pCTR training rows keep the bid: a feature of the ad, not a payment
    imp = warehouse.impressions(clickhouse_client)
    assert imp.loc[imp["query_id"] == "a.run9.s2", "bid"].tolist() == [33]


def test_answer_rows_are_one_row_per_answer_and_policy_metrics_are_their_means(clickhouse_client):
    sink(clickhouse_client, traffic())
    df = warehouse.answer_rows(clickhouse_client, ["run9", "run5"])
    assert tuple(df.columns) == warehouse.ANSWER_COLUMNS
    got = list(df.itertuples(index=False, name=None))
    assert len(got) == len(WANT_ANSWERS)
    for row, want in zip(got, WANT_ANSWERS):
        assert row[:3] == want[:3] and row[3:] == pytest.approx(want[3:]), want[1]
    assert [str(df[c].dtype) for c in ("revenue", "clicks", "n_ads", "generations", "generated_tokens", "generation_s")] == ["float64", "int64", "int64", "int64", "int64", "float64"]

    metrics = warehouse.policy_metrics(clickhouse_client, ["run9", "run5"])
    arms = warehouse.arm_metrics(clickhouse_client, ["slot", "mosaic:4", "v-old"], T)
    assert set(metrics) == {"slot", "mosaic:4", "v-old"}
    for version, rows in df.groupby("policy_version"):
        m = metrics[version]
        means = {
            "queries": len(rows), "revenue_per_query": rows["revenue"].mean(), "expected_revenue_per_query": rows["expected_revenue"].mean(),
            "reward_per_query": rows["reward"].mean(), "reward_var": rows["reward"].var(ddof=1), "ctr": rows["clicks"].sum() / rows["n_ads"].sum(),
            "ads_per_answer": rows["n_ads"].mean(), "format_error_rate": rows["format_error"].mean(), "generations_per_query": rows["generations"].mean(),
            "generated_tokens_per_query": rows["generated_tokens"].mean(), "generation_s_per_query": rows["generation_s"].mean(),
        }
        assert set(m) == set(means), version
        assert m == pytest.approx(means), version
        # the rollout controller's arms read the same definitions (here: every answer of the version, the other run's too)
        if version != "slot":
            assert arms[version] == pytest.approx(m), version
    assert metrics["slot"]["revenue_per_query"] == pytest.approx(6.75) and arms["slot"]["revenue_per_query"] == pytest.approx(14.5 / 3)
    assert metrics["mosaic:4"]["generations_per_query"] == 4.0 and metrics["v-old"]["generations_per_query"] == 1.0
    assert metrics["mosaic:4"]["generated_tokens_per_query"] == 350.0 and metrics["slot"]["generation_s_per_query"] == pytest.approx(0.375)
    assert not math.isnan(metrics["slot"]["reward_var"])

    # one run alone, and runs nobody answered
    assert warehouse.answer_rows(clickhouse_client, ["run5"])["query_id"].tolist() == ["a.run5.o2"]
    for empty in (warehouse.answer_rows(clickhouse_client, ["run8"]), warehouse.answer_rows(clickhouse_client, [])):
        assert empty.empty and tuple(empty.columns) == warehouse.ANSWER_COLUMNS
    assert warehouse.answer_rows(clickhouse_client, [])["revenue"].dtype == np.float64
    assert warehouse.policy_metrics(clickhouse_client, ["run8"]) == {} and warehouse.policy_metrics(clickhouse_client, []) == {}


OLD_RESPONSE_COLUMNS = ["event_id", "ts", "query_id", "policy_version", "user_id", "query", "text", "exposed_ad_ids", "n_ads", "format_error", "format_reasons", "shown_ad_ids", "latency_ms"]
OLD_CLICK_COLUMNS = ["event_id", "ts", "query_id", "ad_id", "clicked", "reason", "policy_version", "user_id", "bid", "click_probability"]


def test_a_warehouse_migrated_before_0008_moves_to_it_once_and_reads_its_older_rows_as_first_price(clickhouse_client, monkeypatch):
    client = clickhouse_client
    shipped = ddl.migrations()
    assert shipped[-1].name == "0008_mechanism_costs"
    client.command("DROP DATABASE IF EXISTS llm_auction SYNC")
    monkeypatch.setattr(ddl, "migrations", lambda: shipped[:7])
    assert ddl.migrate(client)[-1] == "0007_rollout_decisions"
    # rows written then, by the sink of that time (the columns of that time)
    old = old_answer("b.run3.o1", "v-old", "Ad-0002", True, 0.5) + old_answer("b.run3.o2", "v-old", "Ad-0003", False, 0.1)
    responses, clicks = [e for e in old if isinstance(e, ResponseEvent)], [e for e in old if isinstance(e, ClickEvent)]
    warehouse.insert_arrow(client, "responses", warehouse.responses_table(responses).select(OLD_RESPONSE_COLUMNS))
    warehouse.insert_arrow(client, "clicks", warehouse.clicks_table(clicks).select(OLD_CLICK_COLUMNS))
    before = (warehouse.revenue_by_policy(client), warehouse.revenue_per_minute(client))

    monkeypatch.setattr(ddl, "migrations", lambda: shipped)
    assert ddl.pending(client) == ["0008_mechanism_costs"]
    assert ddl.migrate(client) == ["0008_mechanism_costs"]
    assert ddl.migrate(client) == []
    # the older rows read with the defaults: one generation, unknown cost, first price
    assert client.query("SELECT query_id, generations, generated_tokens, generation_s, prices FROM llm_auction.responses FINAL ORDER BY query_id").result_rows == [
        ("b.run3.o1", 1, 0, 0.0, []), ("b.run3.o2", 1, 0, 0.0, []),
    ]
    assert client.query("SELECT ad_id, price FROM llm_auction.clicks FINAL ORDER BY ad_id").result_rows == [("Ad-0002", None), ("Ad-0003", None)]
    assert (warehouse.revenue_by_policy(client), warehouse.revenue_per_minute(client)) == before
    assert warehouse.revenue_by_policy(client)[0]["revenue"] == 17.0
    m = warehouse.policy_metrics(client, ["run3"])["v-old"]
    assert (m["revenue_per_query"], m["expected_revenue_per_query"], m["generations_per_query"]) == pytest.approx((8.5, (8.5 + 3.3) / 2, 1.0))

    # its statements again (two migrators racing, or a ledger row lost) change nothing
    columns = client.query("SELECT table, name, type FROM system.columns WHERE database = 'llm_auction' AND table IN ('responses', 'clicks') ORDER BY table, position").result_rows
    for stmt in shipped[-1].statements():
        client.command(stmt)
    assert client.query("SELECT table, name, type FROM system.columns WHERE database = 'llm_auction' AND table IN ('responses', 'clicks') ORDER BY table, position").result_rows == columns
    assert (warehouse.revenue_by_policy(client), warehouse.revenue_per_minute(client)) == before

    # and today's events land beside them: the slot answer pays its price
    sink(client, answer("b.run3.s1", "slot", ["Ad-0004"], {"Ad-0004": (True, 0.5)}, prices=[12.5], generated_tokens=64))
    assert {r["policy_version"]: r["revenue"] for r in warehouse.revenue_by_policy(client)} == {"slot": 12.5, "v-old": 17.0}


def test_arm_users_sums_per_user_and_cuts_answers_at_the_attribution_window(clickhouse_client):
    sink(clickhouse_client, traffic())
    # slot's s2 was written 70 s after the others: an attribution cut at T + 60 s leaves it out, its click with it
    rows = warehouse.arm_users(clickhouse_client, ["slot", "mosaic:4", "v-old"], T, T + timedelta(seconds=60))
    got = {v: {r["user_id"]: (r["queries"], r["reward_sum"], r["format_errors"]) for r in rs} for v, rs in rows.items()}
    assert got == {
        "slot": {"u0": (1, 1.0 - 10.0, 0), "u1": (1, -36.5, 0)},  # x1 (another run, same arm: user u0) and s1; s2 not yet
        "mosaic:4": {"u0": (1, 7.0, 0), "u3": (1, -500.0, 1)},
        "v-old": {"u0": (2, 40.0, 0)},  # o1 and o2: one user, two queries
    }
    later = warehouse.arm_users(clickhouse_client, ["slot"], T, T + timedelta(seconds=120))
    assert {r["user_id"]: r["queries"] for r in later["slot"]} == {"u0": 1, "u1": 1, "u2": 1}
