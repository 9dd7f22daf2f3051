"""The monitor and the report read the real warehouse and show exact figures."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from llm_auction.cli.monitor import POLICY_COLUMNS, render_snapshot, render_table, snapshot, version_states, write_report
from llm_auction.consumers.rollout_controller import DecisionStore
from llm_auction.infra import warehouse
from llm_auction.schemas import CandidateAd, ClickEvent, QueryEvent, ResponseEvent, UserProfile
from llm_auction.schemas.events import ArmEvidence, RolloutEvent

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


@pytest.fixture
def ch(clickhouse_client):
    """The empty warehouse, rollout decisions included (the shared fixture empties the event tables only)."""
    clickhouse_client.command("TRUNCATE TABLE IF EXISTS llm_auction.rollout_decisions")
    yield clickhouse_client
    clickhouse_client.command("TRUNCATE TABLE IF EXISTS llm_auction.rollout_decisions")


def test_snapshot_has_exact_per_policy_figures_and_renders(ch, tmp_path):
    clickhouse_client = ch
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
    assert snap["rollout"] == {"versions": [], "decisions": []}  # no decision yet: no share/state columns
    assert "share" not in text and "state" not in text and "decisions" not in text

    summary = write_report(clickhouse_client, tmp_path)
    assert (tmp_path / "revenue_per_minute.png").stat().st_size > 1000
    assert (tmp_path / "ctr_per_minute.png").stat().st_size > 1000
    assert "v1" in summary.read_text() and "70.00" in summary.read_text()


def test_render_table_shows_missing_values_as_dash():
    out = render_table([{"policy_version": "v0", "queries": 0, "ctr": None}], POLICY_COLUMNS)
    assert out.splitlines()[2].split()[:4] == ["v0", "0", "-", "-"]


T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def _decision(minute, stable, state, candidate=None, share=0.0, reason="", by="rollout-controller", arms=None):
    return RolloutEvent(
        event_id=RolloutEvent.decision_id(stable, candidate, state, share), stable_version=stable, candidate_version=candidate,
        candidate_share=share, state=state, reason=reason, decided_by=by, decided_at=T0 + timedelta(minutes=minute),
        evidence={v: ArmEvidence(queries=n, reward_per_query=1.0) for v, n in (arms or {}).items()},
    )


HISTORY = [  # what the controller records: v1 canaried and rolled back, v2 canaried and promoted, v3 canaried
    _decision(0, "base", "canary", "v1", 0.1, "announced: canary starts"),
    _decision(10, "base", "rolled_back", "v1", 0.0, "mSPRT p=0.01: reward per query lower", arms={"base": 210, "v1": 205}),
    _decision(20, "base", "canary", "v2", 0.2, "operator: 20% of users", by="operator"),
    _decision(30, "v2", "promoted", reason="mSPRT p=0.002: reward per query higher; previous stable base", arms={"base": 400, "v2": 380}),
    _decision(40, "v2", "canary", "v3", 0.25, "announced: canary starts"),
]


def test_monitor_shows_each_versions_share_and_state_and_the_last_decisions(ch):
    store = DecisionStore(ch)
    for e in HISTORY + HISTORY[-2:]:  # the last two recorded twice (a restarted controller): kept once
        store.record(e)
    rows = [_events("v2", "a", ["Ad-2489"], {"Ad-2489"}), _events("v3", "b", ["Ad-3356"], set())]
    warehouse.insert_queries(ch, [q for q, _, _ in rows])
    warehouse.insert_responses(ch, [r for _, r, _ in rows])
    warehouse.insert_clicks(ch, [c for _, _, cs in rows for c in cs])

    recorded = warehouse.rollout_decisions(ch)
    assert [d["decision_id"] for d in recorded] == [e.event_id for e in HISTORY]
    assert recorded[1]["decided_at"] == T0 + timedelta(minutes=10) and recorded[1]["evidence"]["v1"]["queries"] == 205
    assert recorded[3]["candidate_version"] is None and [d["decision_id"] for d in warehouse.rollout_decisions(ch, limit=2)] == [e.event_id for e in HISTORY[-2:]]

    snap = snapshot(ch, decisions=3)
    assert snap["rollout"]["versions"] == [
        {"policy_version": "v2", "share": pytest.approx(0.75), "state": "stable"},
        {"policy_version": "v3", "share": pytest.approx(0.25), "state": "canary"},
        {"policy_version": "base", "share": 0.0, "state": "retired"},
        {"policy_version": "v1", "share": 0.0, "state": "rolled_back"},
    ]
    pol = {p["policy_version"]: p for p in snap["policies"]}
    assert (pol["v2"]["share"], pol["v2"]["state"], pol["v2"]["revenue_per_query"]) == (pytest.approx(0.75), "stable", pytest.approx(100.0))
    assert (pol["v3"]["share"], pol["v3"]["state"], pol["v3"]["queries"]) == (pytest.approx(0.25), "canary", 1)
    last = snap["rollout"]["decisions"]
    assert [(d["version"], d["state"], d["share"], d["decided_by"]) for d in last] == [
        ("v3", "canary", pytest.approx(0.25), "rollout-controller"), ("v2", "promoted", 1.0, "rollout-controller"), ("v2", "canary", pytest.approx(0.2), "operator"),
    ]
    assert last[1]["queries"] == {"base": 400, "v2": 380} and last[1]["decided_at"] == T0 + timedelta(minutes=30)
    assert last[1]["reason"] == HISTORY[3].reason

    text = render_snapshot(snap)
    assert "rollout: v2 stable 75%, v3 canary 25%  (not served: base retired, v1 rolled_back)" in text
    table = text.split("per policy version\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table[0].split()[:3] == ["policy", "share", "state"] and table[2].split()[:4] == ["v2", "75%", "stable", "1"]
    decisions = text.split("last rollout decisions (newest first)\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(decisions) == 2 + 3 and decisions[2].split()[:7] == ["2025-03-01", "12:40:00", "v3", "canary", "25%", "v2", "-"]
    assert "2025-03-01 12:30:00" in decisions[3] and "base 400 / v2 380" in decisions[3] and "operator" in decisions[4]
    json.loads(json.dumps(snap, default=str))


def test_version_states_after_an_operator_rollback_of_the_stable_version():
    d = [
        {"stable_version": "v1", "candidate_version": None, "candidate_share": 0.0, "state": "promoted"},
        {"stable_version": "v2", "candidate_version": None, "candidate_share": 0.0, "state": "promoted"},
        {"stable_version": "v1", "candidate_version": "v2", "candidate_share": 0.0, "state": "rolled_back"},  # back to v1
    ]
    assert version_states(d) == [{"policy_version": "v1", "share": 1.0, "state": "stable"}, {"policy_version": "v2", "share": 0.0, "state": "rolled_back"}]
    assert version_states([]) == []
