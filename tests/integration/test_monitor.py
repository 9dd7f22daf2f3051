"""The monitor and the report read the real warehouse and show exact figures."""

import json

import pytest

from llm_auction.cli.monitor import POLICY_COLUMNS, render_snapshot, render_table, snapshot, write_report
from llm_auction.infra import warehouse
from llm_auction.schemas import CandidateAd, ClickEvent, QueryEvent, ResponseEvent, UserProfile

pytestmark = pytest.mark.integration

CANDS = [
    CandidateAd(ad_id="Ad-2489", title="Progesterone Tea", category="herbal tea", bid=100),
    CandidateAd(ad_id="Ad-3356", title="American Ginseng Tea", category="herbal tea", bid=40),
]


def _events(version, qid, exposed, clicked, format_error=False):
    q = QueryEvent(query_id=qid, user=UserProfile(user_id="u1", info="x", interests=["tea"]), query="tea?", candidates=CANDS)
    r = ResponseEvent.for_query(query_id=qid, policy_version=version, query=q, text="t", exposed_ad_ids=exposed, n_ads=len(exposed),
                      format_error=format_error, format_reasons=["x"] if format_error else [], ts=q.ts)
    bids = q.bids()
    c = [ClickEvent(query_id=qid, ad_id=a, clicked=a in clicked, policy_version=version, user_id="u1", bid=bids[a], ts=q.ts) for a in exposed]
    return q, r, c


def test_snapshot_has_exact_per_policy_figures_and_renders(clickhouse_client, tmp_path):
    rows = [
        _events("v1", "a", ["Ad-2489"], {"Ad-2489"}),  # revenue 100, penalty -10
        _events("v1", "b", ["Ad-2489", "Ad-3356"], {"Ad-3356"}),  # revenue 40, penalty -40
        _events("v2", "c", [], set(), format_error=True),  # revenue 0, penalty -500
    ]
    warehouse.insert_queries(clickhouse_client, [q for q, _, _ in rows])
    warehouse.insert_responses(clickhouse_client, [r for _, r, _ in rows])
    warehouse.insert_clicks(clickhouse_client, [c for _, _, cs in rows for c in cs])

    snap = snapshot(clickhouse_client)
    pol = {p["policy_version"]: p for p in snap["policies"]}
    assert pol["v1"]["queries"] == 2 and pol["v1"]["exposures"] == 3 and pol["v1"]["clicks"] == 2
    assert pol["v1"]["revenue_per_query"] == pytest.approx(70.0)
    assert pol["v1"]["reward_per_query"] == pytest.approx((140 - 10 - 40) / 2)
    assert pol["v1"]["ctr"] == pytest.approx(2 / 3) and pol["v1"]["ads_per_answer"] == pytest.approx(1.5)
    assert pol["v2"]["reward_per_query"] == pytest.approx(-500.0) and pol["v2"]["format_error_rate"] == pytest.approx(1.0)
    assert snap["totals"]["revenue"] == 140

    text = render_snapshot(snap)
    assert "reward/q" in text and "45.00" in text and "-500.00" in text and "66.7%" in text
    json.dumps(snap, default=str)  # --once --json must serialize

    summary = write_report(clickhouse_client, tmp_path)
    assert (tmp_path / "revenue_per_minute.png").stat().st_size > 1000
    assert (tmp_path / "ctr_per_minute.png").stat().st_size > 1000
    assert "v1" in summary.read_text() and "70.00" in summary.read_text()


def test_render_table_shows_missing_values_as_dash():
    out = render_table([{"policy_version": "v0", "queries": 0, "ctr": None}], POLICY_COLUMNS)
    assert out.splitlines()[2].split()[:4] == ["v0", "0", "-", "-"]
