"""``llm-auction policy rollout|promote|rollback`` against a real broker, as an operator uses them.

The commands read and write the fixed control topics (``auction.rollout``,
``auction.policy-versions``), so the test runs its own local broker: the session's broker is
shared, and another test's events there would be part of the history these commands read.
Checks the decisions each command sends (read back from the topic, as responders read them) and
that a request that makes no sense (a version never announced, promoting the stable version,
rolling back a version that is not serving) exits 2 with the reason and sends nothing.
"""

from __future__ import annotations

import json

import pytest

from llm_auction.cli import main
from llm_auction.consumers.routing import PolicyRouter
from llm_auction.infra.broker import LocalBroker
from llm_auction.infra.kafka import ensure_topics, make_producer, open_reader, read_topics
from llm_auction.schemas import PolicyVersion, RolloutEvent, encode
from llm_auction.schemas.settings import Settings, get_settings
from llm_auction.schemas.topics import POLICY_VERSIONS, ROLLOUT

pytestmark = pytest.mark.integration


@pytest.fixture
def broker():
    with LocalBroker() as b:
        yield b


@pytest.fixture
def policy(broker, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMA_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LLMA_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("LLMA_LOG_LEVEL", "WARNING")
    get_settings.cache_clear()

    def run(*argv: str, rc: int = 0):
        assert main(["policy", *argv]) == rc
        got = capsys.readouterr()
        return json.loads(got.out) if rc == 0 else got.err

    yield run
    get_settings.cache_clear()


def _rollout_topic(bootstrap: str) -> list[RolloutEvent]:
    c = open_reader(Settings(kafka_bootstrap=bootstrap), bootstrap, [ROLLOUT])
    try:
        return read_topics(c, {ROLLOUT: RolloutEvent})
    finally:
        c.close()


def test_operator_decisions_go_through_the_rollout_topic_and_nonsense_sends_nothing(broker, policy):
    s = Settings(kafka_bootstrap=broker.bootstrap)
    ensure_topics(s, broker.bootstrap)
    producer = make_producer(s, broker.bootstrap)
    v1 = PolicyVersion(version="policy-0001", parent=None, uri="file:///nowhere/policy-0001", kind="lora")
    producer.send(POLICY_VERSIONS, key=b"policy-0001", value=encode(v1)).get(timeout=10)
    producer.close()

    assert "policy-0002 was never announced" in policy("rollout", "policy-0002", "--share", "0.2", rc=2)
    assert "known: base, policy-0001" in policy("promote", "policy-00001", rc=2)
    assert "--share must be in [0, 1]" in policy("rollout", "policy-0001", "--share", "1.5", rc=2)
    assert "neither the stable version (base) nor in a canary (none running)" in policy("rollback", "policy-0001", rc=2)
    assert _rollout_topic(broker.bootstrap) == []  # refused requests sent nothing

    canary = policy("rollout", "policy-0001", "--share", "0.2", "--reason", "first look")
    assert (canary["state"], canary["stable_version"], canary["candidate_version"], canary["candidate_share"], canary["reason"]) == ("canary", "base", "policy-0001", 0.2, "first look")
    promoted = policy("promote", "policy-0001")
    assert (promoted["state"], promoted["stable_version"]) == ("promoted", "policy-0001")
    assert "already the stable version" in policy("promote", "policy-0001", rc=2)
    back = policy("rollback", "policy-0001")
    assert (back["state"], back["stable_version"], back["candidate_version"]) == ("rolled_back", "base", "policy-0001")

    sent = _rollout_topic(broker.bootstrap)
    assert [e.event_id for e in sent] == [canary["event_id"], promoted["event_id"], back["event_id"]]
    assert all(e.decided_by == "operator" for e in sent)
    routings = [PolicyRouter.routing_of(e) for e in sent]  # what a responder applies for each
    assert [(r.stable, r.candidate, r.share) for r in routings] == [("base", "policy-0001", 0.2), ("policy-0001", None, 0.0), ("base", None, 0.0)]

    # a mechanism arm over announced versions is a candidate like a version; over an unknown one it is refused
    assert "policy:policy-0009 was never announced" in policy("rollout", "policy:policy-0009", "--share", "0.2", rc=2)
    mosaic = policy("rollout", "mosaic:20", "--share", "0.1")
    assert (mosaic["state"], mosaic["stable_version"], mosaic["candidate_version"], mosaic["candidate_share"]) == ("canary", "base", "mosaic:20", 0.1)
