"""The Faust stream app end to end on the real broker, real MiniLM, real ONNX and an embedded
ClickHouse of its own: simulated impressions in, a published pCTR version out; then a restart
mid-stream that loses no impression and announces no version twice.

The worker runs as ``llm-auction serve stream-app`` in a subprocess (its own event loop, signal
handlers and chdb folder: chdb lets one process open a folder), stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_auction.schemas import PctrVersion, ResponseEvent, decode, encode
from llm_auction.schemas.settings import Settings

pytestmark = pytest.mark.integration

PARTS = 3
MIN_NEW = 1200
TEMPLATE_1 = "Here is a short, helpful answer to your question. If it helps, {m0} is a good fit for this."
TEMPLATE_2 = "A short answer first. You could look at {m0}, and {m1} is also worth a look."
TEMPLATE_3 = "Some options: {m0} for a start, {m1} as an alternative, and {m2} if you want more."


def marker(ad) -> str:
    return f"@{ad.title}@[{ad.ad_id}]"


def traffic(world, sim, encoder, n: int, seed: int, prefix: str):
    """Stored answers naming 1-3 candidates: half the time among the query's 3 most relevant ads
    (MiniLM cosine), else among the least relevant half, as a policy that has not learned
    relevance yet; clicks from the embedding simulator. 80 of the world's queries, mostly one ad:
    few distinct texts, so MiniLM encodes little."""
    rng = random.Random(seed)
    recs = list(world.records())[:80]
    ad_vecs = encoder.encode([f"{a.title}: {a.category}" for a in world.ads])
    responses = []
    for i in range(n):
        rec = rng.choice(recs)
        q = world.event(rec, [rng.randint(1, 100) for _ in world.ads], query_id=f"{prefix}-{i}")
        ranked = np.argsort(-(ad_vecs @ encoder.encode([q.query])[0]))
        pool = ranked[:3] if rng.random() < 0.5 else ranked[len(ranked) // 2 :]
        k = rng.choice((1, 1, 1, 2, 2, 3))
        shown = [q.candidates[j] for j in rng.sample(list(pool), k)]
        q = q.model_copy(update={"candidates": shown})
        ads = shown
        text = (TEMPLATE_1, TEMPLATE_2, TEMPLATE_3)[k - 1].format(**{f"m{j}": marker(a) for j, a in enumerate(ads)})
        responses.append(
            ResponseEvent.for_query(query_id=q.query_id, policy_version="base", query=q, text=text, exposed_ad_ids=[a.ad_id for a in ads], n_ads=k, shown_ad_ids=[a.ad_id for a in shown])
        )
    clicks = sim.clicks_batch(responses)
    return list(zip(responses, clicks))


def produce(producer, topics, items, seed: int) -> None:
    rng = random.Random(seed)
    for resp, clicks in items:
        msgs = [(topics["responses"], resp)] + [(topics["clicks"], c) for c in clicks]
        if rng.random() < 0.25:  # clicks first: they wait in the early-clicks table
            msgs = msgs[1:] + msgs[:1]
        for topic, ev in msgs:
            producer.send(topic, key=resp.query_id, value=encode(ev))
    producer.flush()


class Worker:
    def __init__(self, env: dict, args: list[str], log_path: Path):
        self.log_path = log_path
        self.out = log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "llm_auction.cli", "serve", "stream-app", *args], env=env, stdout=self.out, stderr=subprocess.STDOUT)

    def events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def stop(self, timeout: float = 60) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.out.close()
        assert rc == 0, self.log_path.read_text(errors="replace")[-4000:]
        final = [e for e in self.events() if e.get("service") == "stream-app"]
        assert final, self.log_path.read_text(errors="replace")[-4000:]
        return final[-1]


def wait_for(pred, timeout: float, what: str, worker: Worker):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = pred()
        if got:
            return got
        assert worker.proc.poll() is None, f"worker exited while waiting for {what}:\n" + worker.log_path.read_text(errors="replace")[-4000:]
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n" + worker.log_path.read_text(errors="replace")[-4000:])


def read_versions(settings, bootstrap, topic) -> list[PctrVersion]:
    from llm_auction.infra.kafka import open_reader

    c = open_reader(settings, bootstrap, [topic])
    try:
        out, idle = [], 0
        while idle < 3:
            batch = c.poll(timeout_ms=500)
            recs = [r for rs in batch.values() for r in rs]
            idle = 0 if recs else idle + 1
            out += [decode(r.value, PctrVersion) for r in recs]
        return out
    finally:
        c.close()


def clickhouse_counts(url: str, app_id: str) -> dict:
    """Read the app's chdb folder from a fresh process (this one may run another chdb folder)."""
    code = (
        "import json,sys; from llm_auction.infra.clickhouse import get_client; c=get_client(sys.argv[1]);"
        "q=lambda s: c.query(s).result_rows[0][0];"
        "print(json.dumps({'final': q('SELECT count() FROM llm_auction.stream_impressions FINAL'),"
        "'stored': q('SELECT count() FROM llm_auction.stream_impressions'),"
        "'keys': q('SELECT uniqExact(query_id, ad_id) FROM llm_auction.stream_impressions'),"
        "'clicked': q('SELECT sum(clicked) FROM llm_auction.stream_impressions FINAL'),"
        "'with_truth': q('SELECT countIf(click_probability IS NOT NULL) FROM llm_auction.stream_impressions FINAL'),"
        f"'announced': [list(r) for r in c.query(\"SELECT version, event_id, impressions_total FROM llm_auction.stream_pctr_versions FINAL WHERE app_id='{app_id}' ORDER BY impressions_total\").result_rows]}}))"
    )
    out = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def encoder(request, text_encoder):
    """The session's MiniLM with a cache kept between runs (keyed by text hash: never stale)."""
    cache = request.config.cache.mkdir("llma-stream-app") / "encoder-cache.npz" if getattr(request.config, "cache", None) else None
    if cache:
        text_encoder.load_cache(cache)
    yield text_encoder
    if cache:
        text_encoder.save_cache(cache)


def test_stream_app_joins_persists_retrains_and_survives_a_restart(tmp_path, kafka_bootstrap, fresh_topic, small_world, encoder):
    from llm_auction.infra.kafka import make_producer
    from llm_auction.models.pctr import CHECKPOINT, PctrScorer, load_checkpoint
    from llm_auction.models.user_sim import make_user_simulator
    from llm_auction.trainer.metrics import auc
    from llm_auction.trainer.registry import ModelRegistry

    t_start = time.monotonic()
    settings = Settings(kafka_bootstrap=kafka_bootstrap)
    topics = {"responses": fresh_topic("sa-resp", PARTS), "clicks": fresh_topic("sa-clicks", PARTS), "versions": fresh_topic("sa-pctr", 1), "dlq": fresh_topic("sa-dlq", 1)}
    app_id = f"test-stream-app-{uuid.uuid4().hex[:8]}"
    ch_url = f"chdb://{tmp_path / 'clickhouse'}"
    registry_dir = tmp_path / "registry"
    env = {
        **os.environ,
        "LLMA_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "LLMA_DATA_DIR": str(tmp_path / "data"),
        "LLMA_STREAM_CLICKHOUSE_URL": ch_url,
        "LLMA_REGISTRY_DIR": str(registry_dir),
        "LLMA_PCTR_MIN_NEW_IMPRESSIONS": str(MIN_NEW),
        "LLMA_PCTR_RETRAIN_INTERVAL_S": "2",
        "LLMA_PCTR_MIN_AUC": "0.55",
        # The first retrain's holdout is ~280 rows at a CTR of ~1.5-2.5%: 4-7 clicks, at times under the
        # default of 5 clicked rows (a CI run refused pctr-0001 with 4, AUC 0.92). The gate's rule has
        # its own unit tests; here one click suffices for the AUC to mean something.
        "LLMA_PCTR_MIN_HOLDOUT_CLICKS": "1",
        "LLMA_STREAM_FLUSH_INTERVAL_S": "0.5",
        "LLMA_STREAM_FLUSH_ROWS": "500",
        "LLMA_LOG_FORMAT": "json",
        "LLMA_LOG_LEVEL": "INFO",
        "LLMA_SEED": "7",
    }
    args = ["--app-id", app_id, "--responses-topic", topics["responses"], "--clicks-topic", topics["clicks"], "--versions-topic", topics["versions"],
            "--dead-letter-topic", topics["dlq"], "--partitions", str(PARTS), "--holdout", "0.2", "--epochs", "60", "--patience", "5"]

    sim = make_user_simulator("embedding", seed=11, encoder=encoder)
    phase_a = traffic(small_world, sim, encoder, 1000, seed=1, prefix="a")
    phase_b = traffic(small_world, sim, encoder, 300, seed=2, prefix="b")
    # The worker's encoder starts from this cache (as a deployment keeps <data_dir>/pctr/encoder-cache.npz):
    # the texts are encoded once, here, where the ONNX check needs them anyway.
    encoder.encode(sorted({r.query for r, _ in phase_a + phase_b} | {r.text for r, _ in phase_a + phase_b}))
    encoder.save_cache(tmp_path / "data" / "pctr" / "encoder-cache.npz")
    exposed = sum(r.n_ads for r, _ in phase_a + phase_b)
    assert all(len(c) == r.n_ads and all(x.click_probability is not None for x in c) for r, c in phase_a + phase_b)
    producer = make_producer(settings, kafka_bootstrap)
    marks = {"traffic": time.monotonic() - t_start}

    # -- worker 1: phase A streams in; a version is trained, published and announced
    w1 = Worker(env, args, tmp_path / "worker1.log")
    try:
        produce(producer, topics, phase_a, seed=1)
        producer.send(topics["responses"], key="poison", value=b"{not json")  # dead-lettered, not fatal
        producer.flush()
        marks["worker1_started"] = time.monotonic() - t_start
        wait_for(lambda: any(e.get("msg") == "stream_app: pctr version announced" for e in w1.events()), 240, "a pCTR version", w1)
        marks["version"] = time.monotonic() - t_start
        # -- mid-stream: the first half of phase B's queries sends only responses, the second half
        # only clicks, so both tables hold state when worker 1 stops; the other halves come while
        # it is down. Worker 2 can join them only from the tables' changelogs.
        b1, b2 = phase_b[:75], phase_b[75:150]
        produce(producer, topics, [(r, []) for r, _ in b1], seed=2)
        for r, cs in b2:
            for c in cs:
                producer.send(topics["clicks"], key=r.query_id, value=encode(c))
        producer.flush()
        time.sleep(2.0)
    finally:
        stats1 = w1.stop()
    marks["worker1_stopped"] = time.monotonic() - t_start
    for r, cs in b1:
        for c in cs:
            producer.send(topics["clicks"], key=r.query_id, value=encode(c))
    for r, _ in b2:
        producer.send(topics["responses"], key=r.query_id, value=encode(r))
    produce(producer, topics, phase_b[150:], seed=3)

    # -- worker 2, same app id: restores its tables from the changelog, catches up
    w2 = Worker(env, args, tmp_path / "worker2.log")
    try:
        def caught_up():
            st = [e for e in w2.events() if e.get("msg") == "stream_app: status"]
            return st and st[-1]["impressions"] == exposed
        wait_for(caught_up, 120, f"{exposed} impressions in ClickHouse", w2)
        marks["caught_up"] = time.monotonic() - t_start
        time.sleep(3)  # two more retrain ticks: a restarted worker must not re-announce
    finally:
        stats2 = w2.stop()
    producer.close()

    # no impression lost, none counted twice
    counts = clickhouse_counts(ch_url, app_id)
    assert counts["final"] == exposed == counts["keys"], counts
    assert counts["with_truth"] == exposed
    assert counts["clicked"] == sum(c.clicked for _, cs in phase_a + phase_b for c in cs)  # labels kept across the restart
    assert stats2["pending_at_start"] >= 75 and stats2["early_clicks_at_start"] >= 75, stats2
    assert stats1["bad"] == 1 and stats2["bad"] == 0
    assert stats1["responses"] + stats2["responses"] >= 1300  # redelivery after the restart may repeat some

    # versions: every announced version exactly once, in the registry, and no retrain without MIN_NEW new rows
    events = read_versions(settings, kafka_bootstrap, topics["versions"])
    registry = ModelRegistry(registry_dir, "pctr")
    manifests = registry.list()
    assert events, "no PctrVersion event"
    assert len({e.event_id for e in events}) == len(events) and len({e.version for e in events}) == len(events), [e.version for e in events]
    assert [e.version for e in events] == [m.version for m in manifests]
    assert stats2["skipped_announcements"] == [] and not set(stats1["announced"]) & set(stats2["announced"])
    totals = [row[2] for row in counts["announced"]]
    assert [row[0] for row in counts["announced"]] == [e.version for e in events]
    assert totals[0] >= MIN_NEW and all(b - a >= MIN_NEW for a, b in zip(totals, totals[1:])), totals

    first, m = events[0], manifests[0]
    assert first.event_id == m.event_id() and first.sha256 == m.sha256 and first.onnx_uri == m.artifact_path.resolve().as_uri()
    assert m.extra["source"] == "stream_app" and m.extra["app_id"] == app_id and m.promoted and first.promoted
    # the published ONNX scores as torch does, and ranks phase-B clicks it never trained on
    scorer = PctrScorer(m.artifact_path, encoder=encoder)
    net = load_checkpoint(m.path / CHECKPOINT).eval()
    rows = [(r, c) for r, cs in phase_b for c in cs]
    q = encoder.encode([r.query for r, _ in rows])
    a = encoder.encode([r.text for r, _ in rows])
    users = [r.user.user_id for r, _ in rows]
    ads = [c.ad_id for _, c in rows]
    p_onnx = scorer.score_rows(q, a, users, ads)
    with torch.no_grad():
        p_torch = net(torch.from_numpy(q), torch.from_numpy(a), torch.from_numpy(scorer.user_hasher(users)), torch.from_numpy(scorer.ad_hasher(ads))).numpy()
    assert np.max(np.abs(p_onnx - p_torch)) < 1e-5
    met = m.metrics
    y = np.array([c.clicked for _, c in rows], np.float32)
    truth = np.array([c.click_probability for _, c in rows])
    summary = {"seconds": round(time.monotonic() - t_start, 1), "marks": {k: round(v, 1) for k, v in marks.items()}, "exposed": exposed, "versions": [e.version for e in events],
               "metrics": {k: round(v, 4) for k, v in met.items() if isinstance(v, float)}, "phase_b": {"rows": len(rows), "clicks": int(y.sum()),
               "auc": round(float(auc(y, p_onnx)), 4), "expected_auc": round(expected_auc(p_onnx, truth), 4), "expected_auc_oracle": round(expected_auc(truth, truth), 4),
               "calibration_true": round(float(p_onnx.mean() / truth.mean()), 4)}, "stats1": stats1, "stats2": stats2}
    print(json.dumps(summary))
    # The first version learns from ~1,400 impressions with ~40 clicks and is judged on a ~270-row
    # holdout with 4-10 clicks: its quality varies from run to run (clean-clone CI runs: holdout AUC
    # 0.92 and 0.58, correlation with the truth 0.30 and 0.11). What this test owns is that the
    # stream app trains a real model and ships it intact; pCTR quality has bench/pctr.py. So: the
    # model ranks better than a constant (0.5) in expectation over the simulator's clicks on held-out
    # phase B (no label noise), its scores move with the truth, and it is not better than the oracle.
    assert met["auc"] <= met["oracle_auc"] + 0.05 and 0.33 < met["calibration_ratio"] < 3.0 and met["truth_corr"] > 0.0, met
    assert first.metrics["oracle_auc"] == pytest.approx(met["oracle_auc"])

    # Held-out queries (phase B, never trained on): the AUC in expectation over the simulator's
    # clicks (no sampling noise; a constant scores 0.5, the truth about 0.95; 0.60 in the weakest run seen).
    assert summary["phase_b"]["expected_auc"] > 0.55, summary


def expected_auc(score: np.ndarray, truth: np.ndarray) -> float:
    """AUC in expectation over clicks drawn from ``truth``: P(score_i > score_j) over pairs weighted
    by p_i (1 - p_j), ties counting one half. A constant predictor scores 0.5, the truth its ceiling."""
    order = np.argsort(score, kind="mergesort")
    s, p = score[order], truth[order]
    pos, neg = p, 1 - p
    # for each i: sum of neg_j with s_j < s_i, plus half the ties
    uniq, start = np.unique(s, return_index=True)
    counts = np.diff(np.append(start, len(s)))
    neg_group = np.add.reduceat(neg, start)
    pos_group = np.add.reduceat(pos, start)
    below = np.cumsum(neg_group) - neg_group
    num = float(np.sum(pos_group * (below + 0.5 * neg_group)) - 0.5 * float(np.sum(np.add.reduceat(pos * neg, start))))
    den = float(pos.sum() * neg.sum() - np.sum(pos * neg))
    return num / den
