"""The warehouse against a real ClickHouse engine (chdb here; a server with LLMA_CLICKHOUSE_URL).

The central test inserts 100,000 rows (25,000 responses + 75,000 click events over ten minutes and
two policy versions), reads the per-minute and per-policy views back and compares them with sums
computed here in Python, exactly; then replays the same batch, and a re-sliced overlapping part
of it, and shows that nothing changes although the duplicates are physically stored.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from llm_auction.infra import ddl, warehouse
from llm_auction.infra.errors import InfraError
from llm_auction.schemas.events import CandidateAd, ClickEvent, QueryEvent, ResponseEvent, UserProfile

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 4, 10, 0, 0, tzinfo=timezone.utc)
N_RESPONSES = 25_000
ADS = [CandidateAd(ad_id=f"Ad-{i:04d}", title=f"Ad number {i}", category="c", bid=b) for i, b in zip(range(1, 7), (5, 17, 33, 58, 71, 100))]
USERS = [UserProfile(user_id=f"u{i}", info="a user", interests=["x"]) for i in range(50)]


def make_traffic(n: int = N_RESPONSES):
    """Deterministic traffic: answer i exposes 0, 2, 4 or 6 ads (3 on average, so 3n click events),
    one in 7 has a format error, versions alternate in runs of 3, clicks come 0..29 s after the
    answer (so some land in the next minute), and about 30% of decisions are clicks. One answer in
    5 sets its own prices (half the bid: exact in binary, so float sums stay exact) and states a
    cost; its clicks carry the price, the others pay their bid."""
    responses, clicks = [], []
    span_ms = 10 * 60_000
    for i in range(n):
        ts = T0 + timedelta(milliseconds=i * span_ms // n)
        version = "v1" if (i // 3) % 2 == 0 else "v2"
        user = USERS[i % len(USERS)]
        cands = ADS[i % 2 :] + ADS[: i % 2]  # two orders, same ads and bids
        q = QueryEvent(query_id=f"q{i}", user=user, query=f"question {i % 97}", candidates=cands, ts=ts)
        exposed = [a.ad_id for a in cands[: 2 * (i % 4)]]
        priced = i % 5 == 1
        cost = {"generations": 4, "generated_tokens": 100 + i % 50, "generation_s": 0.25, "prices": [a.bid / 2 for a in cands[: len(exposed)]]} if priced else {}
        r = ResponseEvent.for_query(
            event_id=f"r{i}", query_id=q.query_id, policy_version=version, query=q, text=f"answer {i}", exposed_ad_ids=exposed,
            n_ads=len(exposed), format_error=i % 7 == 0, format_reasons=["malformed marker"] if i % 7 == 0 else [], shown_ad_ids=exposed, ts=ts, **cost,
        )
        responses.append(r)
        for j, ad in enumerate(cands[: len(exposed)]):
            clicks.append(
                ClickEvent(
                    event_id=f"c{i}-{j}", query_id=q.query_id, ad_id=ad.ad_id, clicked=(i * 7 + j * 3) % 10 < 3, policy_version=version,
                    user_id=user.user_id, bid=ad.bid, click_probability=0.3, ts=ts + timedelta(seconds=(i + j) % 30), price=ad.bid / 2 if priced else None,
                )
            )
    return responses, clicks


def minute_of(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def expected_per_minute(responses, clicks) -> list[dict]:
    agg: dict[tuple, dict] = defaultdict(lambda: {"queries": 0, "exposures": 0, "errors": 0, "clicks": 0, "revenue": 0, "penalty": 0})
    for r in responses:
        d = agg[(minute_of(r.ts), r.policy_version)]
        d["queries"] += 1
        d["exposures"] += r.n_ads
        d["errors"] += r.format_error
        d["penalty"] += -10 * r.n_ads**2 - 500 * r.format_error
    for c in clicks:
        d = agg[(minute_of(c.ts), c.policy_version)]
        d["clicks"] += c.clicked
        d["revenue"] += c.charge * c.clicked
    return [
        {
            "minute": m, "policy_version": v, "queries": d["queries"], "exposures": d["exposures"], "clicks": d["clicks"], "revenue": d["revenue"],
            "ads_per_answer": d["exposures"] / d["queries"] if d["queries"] else None,
            "format_error_rate": d["errors"] / d["queries"] if d["queries"] else None,
            "ctr": d["clicks"] / d["exposures"] if d["exposures"] else None,
            "reward_per_query": (d["revenue"] + d["penalty"]) / d["queries"] if d["queries"] else None,
        }
        for (m, v), d in sorted(agg.items())
    ]


def expected_by_policy(responses, clicks) -> list[dict]:
    agg: dict[str, dict] = defaultdict(lambda: {"queries": 0, "exposures": 0, "errors": 0, "clicks": 0, "revenue": 0, "penalty": 0})
    for r in responses:
        d = agg[r.policy_version]
        d["queries"] += 1
        d["exposures"] += r.n_ads
        d["errors"] += r.format_error
        d["penalty"] += -10 * r.n_ads**2 - 500 * r.format_error
    for c in clicks:
        agg[c.policy_version]["clicks"] += c.clicked
        agg[c.policy_version]["revenue"] += c.charge * c.clicked
    return [
        {
            "policy_version": v, "queries": d["queries"], "exposures": d["exposures"], "clicks": d["clicks"], "revenue": d["revenue"],
            "revenue_per_query": d["revenue"] / d["queries"], "ads_per_answer": d["exposures"] / d["queries"],
            "format_error_rate": d["errors"] / d["queries"], "ctr": d["clicks"] / d["exposures"],
            "reward_per_query": (d["revenue"] + d["penalty"]) / d["queries"],
        }
        for v, d in sorted(agg.items())
    ]


@pytest.fixture(scope="module")
def traffic():
    return make_traffic()


def stored(client, table: str) -> int:
    return client.query(f"SELECT count() FROM llm_auction.{table}").result_rows[0][0]


def test_100k_rows_exact_sums_and_replays_never_count_twice(clickhouse_client, traffic):
    client = clickhouse_client
    responses, clicks = traffic
    assert len(responses) + len(clicks) == 100_000
    want_minutes = expected_per_minute(responses, clicks)
    want_policy = expected_by_policy(responses, clicks)
    assert len(want_minutes) == 22 and {m["policy_version"] for m in want_minutes} == {"v1", "v2"}  # 10 minutes + the spill-over one, x 2
    assert sum(m["revenue"] for m in want_minutes) > 0

    # no background merges: the reads alone must dedup (merges would hide duplicates from the counts)
    for table in ("responses", "clicks"):
        client.command(f"SYSTEM STOP MERGES llm_auction.{table}")
    assert warehouse.insert_responses(client, responses) == 25_000
    assert warehouse.insert_clicks(client, clicks) == 75_000
    assert warehouse.revenue_per_minute(client) == want_minutes
    assert warehouse.revenue_by_policy(client) == want_policy
    revenue = sum(c.charge for c in clicks if c.clicked)
    assert revenue != sum(c.bid for c in clicks if c.clicked)  # the prices count
    assert warehouse.totals(client) == {"queries": 0, "responses": 25_000, "click_events": 75_000, "clicks": sum(c.clicked for c in clicks), "revenue": revenue}

    # the same batch again (a crash between insert and offset commit): stored twice, counted once
    warehouse.insert_responses(client, responses)
    warehouse.insert_clicks(client, clicks)
    assert (stored(client, "responses"), stored(client, "clicks")) == (50_000, 150_000)
    assert warehouse.revenue_per_minute(client) == want_minutes
    assert warehouse.revenue_by_policy(client) == want_policy

    # a re-batched, overlapping replay (a restart polls other boundaries): still counted once
    for start in range(5_000, 15_000, 3_333):
        warehouse.insert_responses(client, responses[start : min(start + 3_333, 15_000)])
    for start in range(10_000, 40_000, 7_001):
        warehouse.insert_clicks(client, clicks[start : min(start + 7_001, 40_000)])
    assert (stored(client, "responses"), stored(client, "clicks")) == (60_000, 180_000)
    assert warehouse.revenue_per_minute(client) == want_minutes
    assert warehouse.revenue_by_policy(client) == want_policy
    assert warehouse.totals(client)["revenue"] == revenue

    # and once merges have physically removed the duplicates, the reads agree
    for table in ("responses", "clicks"):
        client.command(f"SYSTEM START MERGES llm_auction.{table}")
        client.command(f"OPTIMIZE TABLE llm_auction.{table} FINAL")
    assert (stored(client, "responses"), stored(client, "clicks")) == (25_000, 75_000)
    assert warehouse.revenue_per_minute(client) == want_minutes
    assert warehouse.revenue_by_policy(client) == want_policy


def test_revenue_per_minute_since_keeps_the_minute_holding_it(clickhouse_client, traffic):
    responses, clicks = traffic
    responses, clicks = responses[:5_000], [c for c in clicks if int(c.query_id[1:]) < 5_000]
    warehouse.insert_responses(clickhouse_client, responses)
    warehouse.insert_clicks(clickhouse_client, clicks)
    want = expected_per_minute(responses, clicks)
    since = T0 + timedelta(minutes=1, seconds=30)
    got = warehouse.revenue_per_minute(clickhouse_client, since=since)
    assert got == [m for m in want if m["minute"] >= T0 + timedelta(minutes=1)]
    # a naive datetime is taken as UTC
    assert warehouse.revenue_per_minute(clickhouse_client, since=since.replace(tzinfo=None)) == got


def test_per_minute_attribution_and_null_ratios(clickhouse_client):
    """A click counts in its own minute; a minute with clicks but no answers has NULL ratios."""
    q = QueryEvent(query_id="qa", user=USERS[0], query="q", candidates=ADS[:2], ts=T0)
    r = ResponseEvent.for_query(event_id="ra", query_id="qa", policy_version="v9", query=q, text="t", exposed_ad_ids=["Ad-0001", "Ad-0002"], n_ads=2, ts=T0 + timedelta(seconds=50))
    c1 = ClickEvent(event_id="ca1", query_id="qa", ad_id="Ad-0001", clicked=True, policy_version="v9", user_id="u0", bid=5, ts=T0 + timedelta(seconds=55))
    c2 = ClickEvent(event_id="ca2", query_id="qa", ad_id="Ad-0002", clicked=True, policy_version="v9", user_id="u0", bid=17, ts=T0 + timedelta(seconds=65))
    warehouse.insert_responses(clickhouse_client, [r])
    warehouse.insert_clicks(clickhouse_client, [c1, c2])
    assert warehouse.revenue_per_minute(clickhouse_client) == [
        {"minute": T0, "policy_version": "v9", "queries": 1, "exposures": 2, "clicks": 1, "revenue": 5, "ads_per_answer": 2.0, "format_error_rate": 0.0, "ctr": 0.5, "reward_per_query": 5.0 - 40},
        {"minute": T0 + timedelta(minutes=1), "policy_version": "v9", "queries": 0, "exposures": 0, "clicks": 1, "revenue": 17, "ads_per_answer": None, "format_error_rate": None, "ctr": None, "reward_per_query": None},
    ]
    assert warehouse.revenue_by_policy(clickhouse_client) == [
        {"policy_version": "v9", "queries": 1, "exposures": 2, "clicks": 2, "revenue": 22, "revenue_per_query": 22.0, "ads_per_answer": 2.0, "format_error_rate": 0.0, "ctr": 1.0, "reward_per_query": 22.0 - 40}
    ]


def test_impressions_join_one_row_per_exposed_ad(clickhouse_client):
    q1 = QueryEvent(query_id="q1", user=USERS[1], query="which tea?", candidates=ADS[:3], ts=T0)
    q2 = QueryEvent(query_id="q2", user=USERS[2], query="which mug?", candidates=ADS[:3], ts=T0)
    r1 = ResponseEvent.for_query(event_id="r1", query_id="q1", policy_version="v1", query=q1, text="answer one", exposed_ad_ids=["Ad-0002", "Ad-0001"], n_ads=2, ts=T0 + timedelta(seconds=1))
    r2 = ResponseEvent.for_query(event_id="r2", query_id="q2", policy_version="v2", query=q2, text="answer two", exposed_ad_ids=["Ad-0003"], n_ads=1, ts=T0 + timedelta(seconds=2))
    clicks = [
        ClickEvent(event_id="k1", query_id="q1", ad_id="Ad-0002", clicked=True, policy_version="v1", user_id="u1", bid=17, ts=T0 + timedelta(seconds=3)),
        ClickEvent(event_id="k2", query_id="q1", ad_id="Ad-0001", clicked=False, policy_version="v1", user_id="u1", bid=5, ts=T0 + timedelta(seconds=3)),
        # a click on an ad the answer did not expose: not an impression
        ClickEvent(event_id="k3", query_id="q1", ad_id="Ad-0003", clicked=True, policy_version="v1", user_id="u1", bid=33, ts=T0 + timedelta(seconds=3)),
    ]  # r2 has no decision yet: no row
    for _ in range(2):  # replayed: still one row per impression
        warehouse.insert_responses(clickhouse_client, [r1, r2])
        warehouse.insert_clicks(clickhouse_client, clicks)
    df = warehouse.impressions(clickhouse_client)
    assert list(df.columns) == ["query_id", "ts", "policy_version", "user_id", "query", "text", "ad_id", "bid", "clicked"]
    rows = df.assign(ts=df["ts"].map(lambda t: t.to_pydatetime())).to_dict("records")
    base = {"query_id": "q1", "ts": T0 + timedelta(seconds=1), "policy_version": "v1", "user_id": "u1", "query": "which tea?", "text": "answer one"}
    assert rows == [{**base, "ad_id": "Ad-0001", "bid": 5, "clicked": 0}, {**base, "ad_id": "Ad-0002", "bid": 17, "clicked": 1}]
    assert str(df["ts"].dt.tz) == "UTC"
    assert len(warehouse.impressions(clickhouse_client, limit=1)) == 1
    assert len(warehouse.impressions(clickhouse_client, since=T0 + timedelta(seconds=2))) == 0
    # the later decision for q2 completes its impression
    warehouse.insert_clicks(clickhouse_client, [ClickEvent(event_id="k4", query_id="q2", ad_id="Ad-0003", clicked=True, policy_version="v2", user_id="u2", bid=33, ts=T0 + timedelta(seconds=9))])
    late = warehouse.impressions(clickhouse_client, since=T0 + timedelta(seconds=2))
    assert late[["query_id", "ad_id", "bid", "clicked", "text"]].to_dict("records") == [{"query_id": "q2", "ad_id": "Ad-0003", "bid": 33, "clicked": 1, "text": "answer two"}]


def test_queries_roundtrip_with_bids_map_and_dedup(clickhouse_client):
    q = QueryEvent(event_id="qe1", query_id="q1", user=USERS[3], query="which tea?", candidates=ADS[:3], split="train", ts=T0)
    assert warehouse.insert_queries(clickhouse_client, [q, q]) == 2  # a duplicate inside one batch, too
    warehouse.insert_queries(clickhouse_client, [q])
    rows = clickhouse_client.query("SELECT event_id, query_id, user_id, query, split, n_candidates, bids FROM llm_auction.queries FINAL").result_rows
    assert rows == [("qe1", "q1", "u3", "which tea?", "train", 3, {"Ad-0001": 5, "Ad-0002": 17, "Ad-0003": 33})]
    assert warehouse.totals(clickhouse_client)["queries"] == 1


def test_empty_inserts_send_nothing(clickhouse_client):
    assert warehouse.insert_queries(clickhouse_client, []) == 0
    assert warehouse.insert_responses(clickhouse_client, []) == 0
    assert warehouse.insert_clicks(clickhouse_client, iter([])) == 0
    assert warehouse.totals(clickhouse_client) == {"queries": 0, "responses": 0, "click_events": 0, "clicks": 0, "revenue": 0}
    assert warehouse.revenue_by_policy(clickhouse_client) == []
    assert warehouse.revenue_per_minute(clickhouse_client) == []


def test_inserts_store_every_column_type_as_clickhouse_connect_does(clickhouse_client):
    # warehouse.insert_arrow (with its settings) against the driver's plain insert_arrow: same rows,
    # same values, for every column type of the three event tables.
    client = clickhouse_client
    responses, clicks = make_traffic(300)
    queries = [QueryEvent(event_id=f"q{i}", query_id=f"q{i}", user=USERS[i % 50], query=f"question {i}", candidates=ADS[i % 3 :], split="test", ts=T0 + timedelta(seconds=i)) for i in range(50)]
    tables = {"queries": warehouse.queries_table(queries), "responses": warehouse.responses_table(responses), "clicks": warehouse.clicks_table(clicks)}

    def dump() -> dict:
        return {t: client.query(f"SELECT * FROM llm_auction.{t} ORDER BY event_id").result_rows for t in tables}

    for table, data in tables.items():
        assert warehouse.insert_arrow(client, table, data) == data.num_rows
    ours = dump()
    for table in tables:
        client.command(f"TRUNCATE TABLE llm_auction.{table}")
    for table, data in tables.items():
        client.insert_arrow(table, data, database="llm_auction")
    assert ours == dump()
    assert [len(ours[t]) for t in tables] == [50, 300, len(clicks)]


def test_per_version_metrics_of_the_loop_and_the_controller_are_eq8_over_answers(clickhouse_client):
    """``policy_metrics`` (the loop's table, by replay tag) and ``arm_metrics`` (the rollout
    controller's arms, by version and time) read one query: per answer, revenue from the clicks,
    expected revenue (bid x the simulator's click probability, 0 where it gave none, 0 for an answer
    without ads), Eq. 8's reward; then per version the means, the reward's sample variance, CTR per
    exposed ad, ads per answer and format-error rate."""
    import numpy as np

    t = T0 + timedelta(hours=5)

    def answer(i, version, ads, format_error=False):
        q = QueryEvent(query_id=f"pm.run7.{i}", user=USERS[0], query="q", candidates=ADS[:3], ts=t)
        return ResponseEvent.for_query(event_id=f"pm-r{i}", query_id=q.query_id, policy_version=version, query=q, text="t", exposed_ad_ids=ads,
                                       n_ads=len(ads), format_error=format_error, format_reasons=["bad marker"] if format_error else [], ts=t)

    def click(i, ad, version, clicked, bid, p):
        return ClickEvent(event_id=f"pm-c{i}-{ad}", query_id=f"pm.run7.{i}", ad_id=ad, clicked=clicked, policy_version=version, user_id="u0", bid=bid, click_probability=p, ts=t)

    responses = [answer(1, "pm-a", ["Ad-0001"]), answer(2, "pm-a", ["Ad-0001", "Ad-0002"]), answer(3, "pm-a", [], format_error=True), answer(4, "pm-b", ["Ad-0003"])]
    clicks = [click(1, "Ad-0001", "pm-a", True, 10, 0.3), click(2, "Ad-0001", "pm-a", False, 10, 0.2), click(2, "Ad-0002", "pm-a", True, 20, 0.5),
              click(4, "Ad-0003", "pm-b", True, 40, None)]
    warehouse.insert_responses(clickhouse_client, responses)
    warehouse.insert_clicks(clickhouse_client, clicks)
    rewards_a = [10 - 10, 20 - 40, 0 - 500]
    expected = {
        "pm-a": {"queries": 3, "revenue_per_query": 10.0, "expected_revenue_per_query": (3.0 + 12.0 + 0.0) / 3, "reward_per_query": np.mean(rewards_a),
                 "reward_var": np.var(rewards_a, ddof=1), "ctr": 2 / 3, "ads_per_answer": 1.0, "format_error_rate": 1 / 3},
        "pm-b": {"queries": 1, "revenue_per_query": 40.0, "expected_revenue_per_query": 0.0, "reward_per_query": 30.0,
                 "ctr": 1.0, "ads_per_answer": 1.0, "format_error_rate": 0.0},
    }
    by_tag = warehouse.policy_metrics(clickhouse_client, ["run7"])
    by_arm = warehouse.arm_metrics(clickhouse_client, ["pm-a", "pm-b"], t - timedelta(seconds=1))
    for got in (by_tag, by_arm):
        assert set(got) == {"pm-a", "pm-b"}
        for version, want in expected.items():
            assert {k: got[version][k] for k in want} == pytest.approx(want), version
    assert warehouse.arm_metrics(clickhouse_client, ["pm-a"], t + timedelta(seconds=1)) == {}  # nothing since then
    assert warehouse.policy_metrics(clickhouse_client, ["run8"]) == {}
