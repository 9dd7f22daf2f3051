"""The stream app's IRPO trigger rule (stream_app/irpo_trigger.decide) and the EpochRequest event."""

from __future__ import annotations

import json

import pytest

from llm_auction.schemas import EVENT_TYPES, EpochRequest, RolloutEvent, SchemaError, decode, encode
from llm_auction.schemas.topics import IRPO_REQUESTS, TOPICS
from llm_auction.stream_app.irpo_trigger import TriggerState, decide


def req(parent: str, pctr: str, total: int, since: int = 0) -> EpochRequest:
    return EpochRequest.new(parent, pctr, impressions_total=total, impressions_since_last=since)


def look(**kw):
    args = dict(stable="base", canary=None, pctr_version="pctr-0001", impressions=0, requests=[], min_impressions=100)
    return decide(**(args | kw))


def test_requests_once_a_promoted_pctr_and_enough_impressions_of_the_stable_policy_exist():
    assert look(pctr_version=None, impressions=500).request is None
    waiting = look(impressions=99)
    assert waiting.request is None and waiting.since == 99 and "99 of 100 impressions of base" in waiting.reason
    d = look(impressions=100, requested_by="app-1")
    r = d.request
    assert (r.parent_version, r.pctr_version, r.impressions_total, r.impressions_since_last, r.requested_by) == ("base", "pctr-0001", 100, 100, "app-1")
    assert r.event_id == EpochRequest.request_id("base", "pctr-0001")


def test_a_pctr_version_serves_one_request_and_the_watermark_is_the_parents_last_request():
    before = [req("base", "pctr-0001", 100)]
    # the same pCTR version again, however many impressions: no second request
    assert look(pctr_version="pctr-0001", impressions=10_000, requests=before).request is None
    # a newer promoted pCTR version: impressions count from the last request of this parent (100)
    assert look(pctr_version="pctr-0002", impressions=199, requests=before).request is None
    d = look(pctr_version="pctr-0002", impressions=200, requests=before)
    assert d.request is not None and d.request.impressions_since_last == 100 and d.request.impressions_total == 200
    # a new stable policy (promoted meanwhile) counts its own impressions from 0
    d = look(stable="policy-0001", pctr_version="pctr-0002", impressions=100, requests=before)
    assert d.request is not None and d.request.parent_version == "policy-0001" and d.since == 100


def test_no_request_while_a_canary_runs():
    d = look(canary="policy-0001", impressions=10_000)
    assert d.request is None and "canary of policy-0001" in d.reason


def test_no_request_while_the_last_one_is_not_served():
    before = [req("base", "pctr-0001", 100)]
    d = look(pctr_version="pctr-0002", impressions=10_000, requests=before, pending=before[0].event_id)
    assert d.request is None and f"epoch request {before[0].event_id} is not served yet" in d.reason
    assert look(pctr_version="pctr-0002", impressions=10_000, requests=before, pending=None).request is not None


def test_pending_reads_the_trainers_record_in_the_policy_registry(tmp_path):
    from llm_auction.trainer.registry import ModelRegistry
    from llm_auction.trainer.service import record_served

    class S:
        policy_version = "base"

    st = TriggerState(S(), "unused:9092", pctr_registry=ModelRegistry(tmp_path, "pctr"), rollout_topic="r", requests_topic="q")
    assert st.pending() is None  # nothing asked yet
    a, b = req("base", "pctr-0001", 100), req("base", "pctr-0002", 300)
    st.requests = {a.event_id: a, b.event_id: b}
    record_served(ModelRegistry(tmp_path, "policy"), a, "no_pairs")
    assert st.pending() == b.event_id  # the last request counts
    record_served(ModelRegistry(tmp_path, "policy"), b, "published", "policy-0001")
    assert st.pending() is None


def test_the_request_id_is_derived_and_checked():
    a, b = req("base", "pctr-0001", 1), req("base", "pctr-0001", 7, 7)
    assert a.event_id == b.event_id != req("base", "pctr-0002", 1).event_id != req("policy-0001", "pctr-0001", 1).event_id
    assert decode(encode(a), EpochRequest) == a and EVENT_TYPES["EpochRequest"] is EpochRequest
    bad = json.loads(encode(a)) | {"event_id": "not-derived"}
    with pytest.raises(SchemaError, match="event_id"):
        decode(json.dumps(bad), EpochRequest)
    with pytest.raises(SchemaError, match="impressions_total"):
        decode(json.dumps(json.loads(encode(a)) | {"impressions_total": -1}), EpochRequest)
    spec = TOPICS[IRPO_REQUESTS]
    assert (spec.partitions, spec.retention_ms) == (1, -1)


def test_routing_comes_from_the_latest_rollout_event():
    class S:
        policy_version = "base"

    st = TriggerState(S(), "unused:9092", pctr_registry=None, rollout_topic="r", requests_topic="q")
    assert st.routing() == ("base", None)
    st.latest_rollout = RolloutEvent(stable_version="base", candidate_version="policy-0001", candidate_share=0.1, state="canary")
    assert st.routing() == ("base", "policy-0001")
    st.latest_rollout = RolloutEvent(stable_version="policy-0001", state="promoted")
    assert st.routing() == ("policy-0001", None)
    st.latest_rollout = RolloutEvent(stable_version="base", candidate_version="policy-0002", candidate_share=0.0, state="rolled_back")
    assert st.routing() == ("base", None)
