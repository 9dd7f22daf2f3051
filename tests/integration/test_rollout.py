"""A policy version rolled out online: the tiny GPT-2 with a real LoRA adapter, the real broker and ClickHouse.

One story, in order: a version published with the policy registry is announced; the rollout
controller starts its canary; the responder (following the control topics) serves it to exactly
the users the salted hash assigns; synthetic responses and clicks in ClickHouse (the candidate
clearly worse on reward per query) drive the controller to a rollback, recorded once across
restarts; every user is back on the stable version; a version whose adapter file was altered
after publication is refused and dead-lettered, and a rollout to it changes nothing.
"""

from __future__ import annotations

import time
from collections import namedtuple
from datetime import datetime, timedelta, timezone

import pytest

from models_fixtures import make_queries, random_lora_adapter, tiny_model_dir  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration

Rec = namedtuple("Rec", "topic partition offset key value")


def make_adapter(base_dir, out, seed: int = 0):
    """A LoRA adapter on GPT-2's ``c_attn`` (random B: it changes the output)."""
    return random_lora_adapter(base_dir, out, seed, r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)


def wait_for(cond, timeout_s: float = 20.0, what: str = ""):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def synthetic_arm(version: str, n: int, click_rate: float, since: datetime, seed: int):
    """``n`` answered queries of ``version``, each by a user of its own (the controller's unit is
    the user), with one exposed ad (bid 50) clicked at ``click_rate``."""
    import random

    from llm_auction.schemas import ClickEvent, ResponseEvent

    rng = random.Random(seed)
    resps, clicks = [], []
    for i in range(n):
        ts = since + timedelta(milliseconds=10 * i + 5)
        q = make_queries(1, seed=seed * 10_000 + i, n_candidates=3)[0]
        q = q.model_copy(update={"ts": ts, "query_id": f"{version}-q{i}", "user": q.user.model_copy(update={"user_id": f"{version}-u{i}"})})
        ad = q.candidates[0]
        r = ResponseEvent.for_query(q, event_id=f"{version}-r{i}", ts=ts, policy_version=version, text=f"@{ad.title}@[{ad.ad_id}]", exposed_ad_ids=[ad.ad_id], n_ads=1)
        resps.append(r)
        clicks.append(ClickEvent(event_id=f"{version}-c{i}", ts=ts, query_id=q.query_id, ad_id=ad.ad_id, clicked=rng.random() < click_rate,
                                 policy_version=version, user_id=q.user.user_id, bid=50))
    return resps, clicks


def test_rollout_canary_decision_rollback_and_a_tampered_version(tiny_model_dir, kafka_settings, kafka_bootstrap, fresh_topic, clickhouse_client, tmp_path):  # noqa: F811
    from llm_auction.consumers.control import ControlFollower
    from llm_auction.consumers.responder import ResponderHandler
    from llm_auction.consumers.rollout_controller import RolloutController, RolloutRule, operator_event
    from llm_auction.consumers.routing import PolicyRouter, bucket
    from llm_auction.consumers.service import Item
    from llm_auction.infra.kafka import make_producer, open_reader, read_topics
    from llm_auction.infra.warehouse import insert_clicks, insert_responses
    from llm_auction.models.adllm import SamplingConfig

    try:
        from llm_auction.models.backends import make_backend
    except ImportError:  # before the backends' factory moved out of models/adllm.py
        from llm_auction.models.adllm import make_backend
    from llm_auction.schemas import DeadLetter, RolloutEvent, decode, encode
    from llm_auction.schemas.catalog import load_catalog
    from llm_auction.trainer.registry import ModelRegistry

    pv, ro, dl = fresh_topic("pv", 1), fresh_topic("ro", 1), fresh_topic("dl", 1)
    clickhouse_client.command("TRUNCATE TABLE IF EXISTS llm_auction.rollout_decisions")
    settings = kafka_settings.with_overrides(policy_version="base")
    registry = ModelRegistry(tmp_path / "registry", "policy")
    extra = {"policy_kind": "lora", "base_model": str(tiny_model_dir)}
    v1 = registry.publish(make_adapter(tiny_model_dir, tmp_path / "a1", seed=1), extra=extra).to_event()
    v2 = registry.publish(make_adapter(tiny_model_dir, tmp_path / "a2", seed=2), extra=extra).to_event()

    producer = make_producer(settings, kafka_bootstrap)
    backend = make_backend("transformers", tiny_model_dir, num_threads=1, sampling=SamplingConfig(temperature=0, max_new_tokens=6))
    follower = ControlFollower(settings, kafka_bootstrap, backend, PolicyRouter("base"), producer, policy_topic=pv, rollout_topic=ro, dead_letter_topic=dl).start()
    handler = ResponderHandler(backend, load_catalog(), follower.router, pick=lambda q: list(q.candidates[:3]), control=follower)
    queries = make_queries(30, seed=3, n_candidates=5)  # users u0..u29

    def serve() -> dict[str, str]:
        out = handler.handle([Item(Rec("auction.queries", 0, i, q.query_id.encode(), b""), q) for i, q in enumerate(queries)])
        assert not out.rejected and len(out.outputs) == len(queries)
        return {o.event.user.user_id: o.event.policy_version for o in out.outputs}

    def controller():
        rule = RolloutRule(canary_share=0.3, min_queries=100, max_queries=5000, alpha=0.05, tau=10.0, attribution_window_s=0.0)
        return RolloutController(settings, kafka_bootstrap, clickhouse_client, producer, rule=rule, policy_topic=pv, rollout_topic=ro).start()

    try:
        # 1. announced -> the controller starts a canary at 30%; the responder serves it by the hash
        producer.send(pv, key=v1.version.encode(), value=encode(v1)).get(timeout=10)
        ctl = controller()
        canary = ctl.step()
        assert (canary.state, canary.stable_version, canary.candidate_version, canary.candidate_share) == ("canary", "base", v1.version, 0.3)
        wait_for(lambda: follower.apply_pending() or follower.router.state.candidate == v1.version, what="the canary routing")
        served = serve()
        want = {q.user.user_id: v1.version if bucket(v1.version, q.user.user_id) < 3000 else "base" for q in queries}
        assert served == want and set(want.values()) == {"base", v1.version}

        # 2. a restart during the canary starts nothing new; synthetic traffic makes the candidate clearly worse
        ctl.close()
        ctl = controller()
        assert ctl.step() is None  # under the minimum: waits
        since = canary.decided_at + timedelta(milliseconds=1)
        for version, rate, seed in (("base", 0.6, 1), (v1.version, 0.1, 2)):
            resps, clicks = synthetic_arm(version, 150, rate, since, seed)
            insert_responses(clickhouse_client, resps)
            insert_clicks(clickhouse_client, clicks)
        time.sleep(max(0.0, (since + timedelta(seconds=2) - datetime.now(timezone.utc)).total_seconds()))  # every synthetic answer in the past
        decision = ctl.step()
        assert decision.state == "rolled_back" and decision.candidate_version == v1.version and decision.stable_version == "base"
        assert decision.evidence[v1.version].queries >= 150 and decision.evidence["base"].reward_per_query > decision.evidence[v1.version].reward_per_query
        assert decision.reason.startswith("mSPRT") and decision.test["p_value"] <= 0.05

        # 3. restarted after the decision: it decides nothing again; the table holds each decision once
        ctl.close()
        ctl = controller()
        assert ctl.step() is None and [e.event_id for e in ctl.history] == [canary.event_id, decision.event_id]
        rows = clickhouse_client.query("SELECT decision_id, state FROM llm_auction.rollout_decisions FINAL ORDER BY decided_at").result_rows
        assert rows == [(canary.event_id, "canary"), (decision.event_id, "rolled_back")]
        ctl.close()

        # 4. the rollback returns every user to the stable version
        wait_for(lambda: follower.apply_pending() or follower.router.state.candidate is None, what="the rollback routing")
        assert set(serve().values()) == {"base"}

        # 5. an altered adapter: refused and dead-lettered; a rollout to it changes nothing
        (registry.dir / v2.version / "adapter_model.safetensors").write_bytes(b"not the published weights")
        producer.send(pv, key=v2.version.encode(), value=encode(v2)).get(timeout=10)
        wait_for(lambda: follower.apply_pending() or v2.version in follower.refused, what="the refusal")
        rollout = operator_event(ctl.history, "base", "rollout", v2.version, 0.5)
        producer.send(ro, key=v2.version.encode(), value=encode(rollout)).get(timeout=10)
        wait_for(lambda: follower.apply_pending() or (follower.desired is not None and follower.desired.event_id == rollout.event_id), what="the rollout to the refused version")
        assert v2.version not in backend.versions and follower.router.state.candidate is None
        assert set(serve().values()) == {"base"}
        consumer = open_reader(settings, kafka_bootstrap, [dl])
        dead = read_topics(consumer, {dl: DeadLetter})
        consumer.close()
        assert len(dead) == 1 and dead[0].source_topic == pv and "sha256 mismatch for ['adapter_model.safetensors']" in dead[0].error
        assert decode(dead[0].payload, type(v2)).version == v2.version
        assert isinstance(rollout, RolloutEvent)
    finally:
        follower.stop()
        producer.close()
        backend.close()
