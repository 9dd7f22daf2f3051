"""IRPO from the stream, with real parts: the Faust stream app (a subprocess with its own chdb folder)
joins simulated traffic of the base policy, retrains and promotes a pCTR version (real MiniLM and
ONNX), and its IRPO trigger requests one epoch on the request topic of the real broker; the trainer
service (``llm-auction serve trainer``, a subprocess that opens no warehouse) runs it on the tiny
GPT-2 scored by that pCTR version, publishes one policy version and announces it once.

Asserted: the request is sent once after the promotion and enough impressions, and not again for
more impressions under the same pCTR version; the trainer publishes exactly one version, whose
manifest names the requested parent and pCTR version and records the request, announces it once,
and a re-delivered request (the trigger sent again, then the whole topic read again by a fresh
group) does not train again. The default suite runs the trainer in-process (the same
``run_configured_epoch`` the command assembles); the ``slow`` variant also restarts the stream app
(it reads its requests back from the topic: no second request) and runs ``llm-auction serve
trainer`` as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import pytest
from test_stream_app import Worker, produce, traffic, wait_for

from llm_auction.producers.versions import announce
from llm_auction.schemas import EpochRequest, PolicyVersion, encode
from llm_auction.schemas.settings import Settings
from models_fixtures import tiny_model_dir  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration

PARTS = 3
TRIGGER = 700  # impressions of the stable policy for a request
MIN_NEW = 600  # impressions for a pCTR retrain


def read_all(settings, bootstrap, topic, model):
    from llm_auction.infra.kafka import open_reader, read_topics

    c = open_reader(settings, bootstrap, [topic])
    try:
        return read_topics(c, {topic: model})
    finally:
        c.close()


@dataclass
class Story:
    settings: Settings
    topics: dict
    env: dict
    args: list
    app_id: str
    request: EpochRequest
    stats: dict
    marks: dict
    t0: float


def stream_until_requested(tmp_path, kafka_bootstrap, fresh_topic, small_world, text_encoder) -> Story:
    """Run the stream app on base-policy traffic until it requests an epoch; more traffic, no second request."""
    from llm_auction.infra.kafka import make_producer
    from llm_auction.models.user_sim import make_user_simulator

    t0 = time.monotonic()
    settings = Settings(kafka_bootstrap=kafka_bootstrap)
    topics = {
        "responses": fresh_topic("ifs-resp", PARTS), "clicks": fresh_topic("ifs-clicks", PARTS), "pctr": fresh_topic("ifs-pctr", 1), "dlq": fresh_topic("ifs-dlq", 1),
        "rollout": fresh_topic("ifs-rollout", 1), "requests": fresh_topic("ifs-req", 1), "policy": fresh_topic("ifs-policy", 1),
    }
    env = {
        **os.environ, "LLMA_KAFKA_BOOTSTRAP": kafka_bootstrap, "LLMA_DATA_DIR": str(tmp_path / "data"), "LLMA_REGISTRY_DIR": str(tmp_path / "registry"),
        "LLMA_STREAM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'stream-ch'}", "LLMA_PCTR_MIN_NEW_IMPRESSIONS": str(MIN_NEW),
        "LLMA_PCTR_RETRAIN_INTERVAL_S": "1", "LLMA_PCTR_MIN_AUC": "0.0", "LLMA_PCTR_MIN_HOLDOUT_CLICKS": "0", "LLMA_STREAM_FLUSH_INTERVAL_S": "0.5", "LLMA_STREAM_FLUSH_ROWS": "500",
        "LLMA_IRPO_TRIGGER_ENABLED": "true", "LLMA_IRPO_TRIGGER_IMPRESSIONS": str(TRIGGER), "LLMA_LOG_FORMAT": "json", "LLMA_LOG_LEVEL": "INFO", "LLMA_SEED": "7",
    }
    app_id = f"test-irpo-stream-{uuid.uuid4().hex[:8]}"
    args = ["--app-id", app_id, "--responses-topic", topics["responses"], "--clicks-topic", topics["clicks"], "--versions-topic", topics["pctr"],
            "--dead-letter-topic", topics["dlq"], "--rollout-topic", topics["rollout"], "--irpo-requests-topic", topics["requests"],
            "--partitions", str(PARTS), "--holdout", "0.3", "--epochs", "4"]

    sim = make_user_simulator("embedding", seed=11, encoder=text_encoder)
    phase_a = traffic(small_world, sim, text_encoder, 480, seed=1, prefix="a")
    phase_b = traffic(small_world, sim, text_encoder, 150, seed=2, prefix="b")
    text_encoder.encode(sorted({r.query for r, _ in phase_a + phase_b} | {r.text for r, _ in phase_a + phase_b}))
    text_encoder.save_cache(tmp_path / "data" / "pctr" / "encoder-cache.npz")  # the worker starts from it
    exposed_a = sum(r.n_ads for r, _ in phase_a)
    exposed_b = sum(r.n_ads for r, _ in phase_b)
    # one pCTR retrain in all (fewer than 2 x MIN_NEW impressions), and the trigger's count reached in phase A
    assert TRIGGER <= exposed_a and MIN_NEW <= exposed_a and exposed_a + exposed_b < 2 * MIN_NEW, (exposed_a, exposed_b)
    producer = make_producer(settings, kafka_bootstrap)
    marks = {}
    w1 = Worker(env, args, tmp_path / "worker1.log")
    try:
        produce(producer, {"responses": topics["responses"], "clicks": topics["clicks"]}, phase_a, seed=1)
        requested = lambda: [e for e in w1.events() if e.get("msg") == "stream_app: irpo epoch requested"]  # noqa: E731
        wait_for(requested, 180, "an epoch request", w1)
        marks["requested"] = time.monotonic() - t0
        # more impressions under the same pCTR version (too few for a retrain): no second request
        produce(producer, {"responses": topics["responses"], "clicks": topics["clicks"]}, phase_b, seed=2)
        wait_for(lambda: any(e.get("msg") == "stream_app: status" and e.get("impressions") == exposed_a + exposed_b for e in w1.events()), 60, "phase B joined", w1)
        time.sleep(2.5)  # more trigger ticks
    finally:
        stats = w1.stop()
        producer.close()
    ev = requested()[0]
    assert stats["announced"] == ["pctr-0001"] and len(stats["epoch_requests"]) == 1, stats
    assert ev["parent"] == "base" and ev["pctr_version"] == "pctr-0001" and ev["impressions_total"] >= TRIGGER
    (req,) = read_all(settings, kafka_bootstrap, topics["requests"], EpochRequest)
    assert req.event_id == EpochRequest.request_id("base", "pctr-0001") == stats["epoch_requests"][0] and req.requested_by == app_id
    assert req.impressions_total == req.impressions_since_last == ev["impressions_total"]
    return Story(settings, topics, env, args, app_id, req, stats, marks, t0)


def resend(story: Story, bootstrap: str) -> None:
    """The trigger sent again: the same request (same derived id) a second time on the topic."""
    from llm_auction.infra.kafka import make_producer

    p = make_producer(story.settings, bootstrap)
    try:
        p.send(story.topics["requests"], key=b"base", value=encode(story.request)).get(timeout=30)
    finally:
        p.close()


def check_served_once(story: Story, registry_dir, bootstrap: str, fresh_group):
    """One version from base scored by the requested pCTR, announced once; a fresh group re-reading
    the request topic trains nothing. Returns the manifest."""
    from llm_auction.infra.kafka import make_producer
    from llm_auction.trainer.registry import ModelRegistry
    from llm_auction.trainer.service import EpochTrainer, served_record

    req, topics = story.request, story.topics
    registry = ModelRegistry(registry_dir, "policy")
    (m,) = registry.list()
    assert m.parent is None and m.extra["pctr_version"] == "pctr-0001" and m.extra["policy_kind"] == "lora"  # base -> policy-0001, scored by the requested pCTR
    r = m.data_window["request"]
    assert (r["request_id"], r["parent_version"], r["pctr_version"], r["impressions_total"]) == (req.event_id, "base", "pctr-0001", req.impressions_total)
    assert m.data_window["queries"] == 16 and m.metrics["pairs"] > 0 and registry.is_announced("policy-0001")
    assert served_record(registry, req.event_id)["version"] == "policy-0001"  # what the trigger reads before its next request

    calls = []
    p = make_producer(story.settings, bootstrap)
    try:
        again = EpochTrainer(story.settings, bootstrap, registry, lambda *a: calls.append(a), p, lambda m: announce(registry, m, p, topics["policy"]),
                             requests_topic=topics["requests"], dead_letter_topic=topics["dlq"], group=fresh_group("trainer-again"))
        st = again.run(threading.Event(), max_requests=2, idle_exit_s=20)
    finally:
        p.close()
    assert calls == [] and st.already_served == [req.event_id, req.event_id] and st.announced == [] and len(registry.list()) == 1

    versions = read_all(story.settings, bootstrap, topics["policy"], PolicyVersion)  # as the rollout controller reads them
    assert [(v.version, v.parent, v.pctr_version, v.kind, v.sha256) for v in versions] == [("policy-0001", None, "pctr-0001", "lora", m.sha256)]
    return m


EPOCH = dict(queries=16, samples_per_query=4, candidates_k=8, max_new_tokens=48, pairing="all", sft_weight=0.0, learning_rate=1e-2, num_epochs=1, batch_size=4, bf16=False, threads=2, backend="transformers")


def test_the_stream_app_requests_an_epoch_once_and_the_trainer_serves_it_once(
    tmp_path, kafka_bootstrap, fresh_topic, fresh_group, small_world, text_encoder, tiny_model_dir,  # noqa: F811
):
    from llm_auction.infra.kafka import make_producer
    from llm_auction.trainer.epoch_setup import run_configured_epoch
    from llm_auction.trainer.irpo_config import IRPOConfig
    from llm_auction.trainer.registry import ModelRegistry
    from llm_auction.trainer.service import EpochTrainer

    story = stream_until_requested(tmp_path, kafka_bootstrap, fresh_topic, small_world, text_encoder)
    resend(story, kafka_bootstrap)
    topics, registry = story.topics, ModelRegistry(tmp_path / "registry", "policy")
    settings = story.settings.with_overrides(adllm_threads=1)
    cfg = IRPOConfig(**EPOCH)

    def run_epoch(request, extra):  # what `serve trainer` runs for a request of the base policy
        return run_configured_epoch(cfg, world=small_world, model=tiny_model_dir, registry=registry, parent=None, pctr_version=request.pctr_version,
                                    encoder=text_encoder, settings=settings, data_window_extra=extra)

    p = make_producer(settings, kafka_bootstrap)
    try:
        trainer = EpochTrainer(settings, kafka_bootstrap, registry, run_epoch, p, lambda m: announce(registry, m, p, topics["policy"]),
                               requests_topic=topics["requests"], dead_letter_topic=topics["dlq"], group=fresh_group("trainer"))
        st = trainer.run(threading.Event(), max_requests=2, idle_exit_s=60)
    finally:
        p.close()
    story.marks["trained"] = time.monotonic() - story.t0
    assert st.requests == 2 and st.trained == ["policy-0001"] and st.already_served == [story.request.event_id] and st.announced == ["policy-0001"], st
    m = check_served_once(story, tmp_path / "registry", kafka_bootstrap, fresh_group)
    print(json.dumps({"seconds": round(time.monotonic() - story.t0, 1), "marks": {k: round(v, 1) for k, v in story.marks.items()}, "request": story.request.model_dump(mode="json"),
                      "version_metrics": {k: m.metrics.get(k) for k in ("pairs", "mean_reward", "format_error_rate", "dpo_first_loss")}}))


@pytest.mark.slow
def test_a_restarted_stream_app_requests_nothing_again_and_serve_trainer_serves_the_request_once(
    tmp_path, kafka_bootstrap, fresh_topic, fresh_group, small_world, text_encoder, tiny_model_dir,  # noqa: F811
):
    story = stream_until_requested(tmp_path, kafka_bootstrap, fresh_topic, small_world, text_encoder)
    w2 = Worker(story.env, story.args, tmp_path / "worker2.log")  # reads its requests back from the topic
    try:
        wait_for(lambda: any(e.get("msg") == "stream_app: irpo trigger waits" for e in w2.events()), 90, "the restarted trigger's first look", w2)
        time.sleep(1.5)
    finally:
        stats2 = w2.stop()
    assert stats2["epoch_requests"] == [] and stats2["announced"] == [], stats2
    assert len(read_all(story.settings, kafka_bootstrap, story.topics["requests"], EpochRequest)) == 1
    story.marks["restarted"] = time.monotonic() - story.t0

    resend(story, kafka_bootstrap)
    topics = story.topics
    flags = {"queries": "16", "samples": "4", "candidates-k": "8", "max-new-tokens": "48", "pairing": "all", "lr": "1e-2", "dpo-epochs": "1", "batch-size": "4", "threads": "2"}
    cmd = [sys.executable, "-m", "llm_auction.cli", "serve", "trainer", "--backend", "transformers", "--model", str(tiny_model_dir), "--world", str(small_world.root),
           *[x for k, v in flags.items() for x in (f"--{k}", v)], "--no-bf16", "--requests-topic", topics["requests"], "--versions-topic", topics["policy"],
           "--dead-letter-topic", topics["dlq"], "--group", fresh_group("trainer"), "--max-requests", "2", "--idle-exit", "60"]
    out = subprocess.run(cmd, env={**story.env, "LLMA_ADLLM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    story.marks["trained"] = time.monotonic() - story.t0
    assert stats["service"] == "trainer" and stats["requests"] == 2 and stats["trained"] == ["policy-0001"], stats
    assert stats["already_served"] == [story.request.event_id] and stats["announced"] == ["policy-0001"] and stats["dead_lettered"] == 0, stats
    check_served_once(story, tmp_path / "registry", kafka_bootstrap, fresh_group)
    print(json.dumps({"seconds": round(time.monotonic() - story.t0, 1), "marks": {k: round(v, 1) for k, v in story.marks.items()}, "trainer": stats}))
