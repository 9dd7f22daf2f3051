"""Model artifacts (issue 15, fault suite item 5): what was published is what is loaded.

- A pCTR version whose ONNX file was truncated or altered after publication (or whose sidecar was)
  is refused by sha256 before onnxruntime reads it, and a scorer already serving the current
  version keeps scoring as before. An altered weight is the dangerous case: the file still loads
  and silently scores differently, which the test shows on a copy outside the registry.
- A policy version folder holding a pickle file (``.bin``, ``.pt``) is refused by the responder's
  control follower even when every hash matches (a hash does not make a pickle safe to load); the
  current routing keeps serving. The registry refuses pickle at publication
  (tests/unit/test_registry.py); this covers a folder written by other means. A policy folder
  altered after publication is tests/integration/test_rollout.py (not repeated here).

Real parts: the registry on disk, ONNX files exported from a real network and served by
onnxruntime, the control follower on the real broker.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import numpy as np
import pytest
import torch
from faults_support import report_counts

from llm_auction.infra.artifacts import MANIFEST, ArtifactMismatch, folder_sha256, verify_folder
from llm_auction.models.pctr import AD_SALT, USER_SALT, ArtifactMismatchError, IdHasher, PctrNet, PctrScorer, export_onnx, random_batch, sidecar_path
from llm_auction.trainer.registry import ModelRegistry

pytestmark = [pytest.mark.faults, pytest.mark.integration]

DIM = 32


def _net(seed: int) -> PctrNet:
    torch.manual_seed(seed)
    net = PctrNet(text_dim=DIM, user_buckets=512, ad_buckets=128)
    net.mark_seen(IdHasher(512, USER_SALT)([f"u{i}" for i in range(50)]), IdHasher(128, AD_SALT)([f"Ad-{i:04d}" for i in range(20)]))
    return net


def _publish(registry: ModelRegistry, tmp_path, seed: int):
    path = export_onnx(_net(seed), tmp_path / f"src{seed}" / "model.onnx", DIM)
    return registry.publish({"model.onnx": path, "model.json": sidecar_path(path)}, metrics={"auc": 0.6}, data_window={"seed": seed})


BATCH = random_batch(64, DIM, 512, 128, seed=5)


def _scores(scorer: PctrScorer) -> np.ndarray:
    q, a, u, d = BATCH
    return scorer.session.run(["pctr"], {"query_emb": q, "answer_emb": a, "user_idx": u, "ad_idx": d})[0]


def test_a_truncated_or_altered_pctr_version_is_refused_and_the_current_one_keeps_scoring(tmp_path, record_property):
    registry = ModelRegistry(tmp_path / "registry", "pctr")
    v1, v2 = _publish(registry, tmp_path, 1), _publish(registry, tmp_path, 2)
    current = PctrScorer(v1.artifact_path)
    before = _scores(current)
    intact = _scores(PctrScorer(v2.artifact_path))  # as published, v2 loads (the check can pass)
    assert not np.allclose(before, intact)
    original = v2.artifact_path.read_bytes()
    refused = []

    # truncated: half the file
    v2.artifact_path.write_bytes(original[: len(original) // 2])
    with pytest.raises(ArtifactMismatchError, match="the registry published") as e:
        PctrScorer(v2.artifact_path)
    refused.append(str(e.value))

    # altered: one weight changed in place (same length); find a parameter's bytes in the file
    weight = _net(2).state_dict()["mlp.0.bias"].numpy() if "mlp.0.bias" in _net(2).state_dict() else next(p for p in _net(2).parameters() if p.ndim == 1).detach().numpy()
    raw = weight.astype(np.float32).tobytes()[:16]
    at = original.find(raw)
    assert at > 0, "a parameter's bytes are stored raw in the ONNX file"
    altered = original[:at] + (np.frombuffer(raw, np.float32) + 3.0).astype(np.float32).tobytes() + original[at + 16 :]
    v2.artifact_path.write_bytes(altered)
    with pytest.raises(ArtifactMismatchError, match="refused"):
        PctrScorer(v2.artifact_path)
    # Why the hash matters: outside a registry (no manifest, no announced hash) the altered file
    # loads and scores differently, silently; with the announced sha256 it is refused there too.
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(v2.artifact_path, loose / "model.onnx")
    shutil.copy(sidecar_path(v2.artifact_path), loose / "model.json")
    assert not np.allclose(_scores(PctrScorer(loose / "model.onnx")), intact, atol=1e-6)
    with pytest.raises(ArtifactMismatchError, match="not the announced"):
        PctrScorer(loose / "model.onnx", expected_sha256=v2.sha256)
    refused.append("altered weight")

    # the sidecar (hash salts, text dim) altered: refused as well
    v2.artifact_path.write_bytes(original)
    side = sidecar_path(v2.artifact_path)
    cfg = json.loads(side.read_text())
    cfg["user_hash"]["salt"] = "another-salt"
    side.write_text(json.dumps(cfg))
    with pytest.raises(ArtifactMismatchError, match="sidecar"):
        PctrScorer(v2.artifact_path)
    refused.append("altered sidecar")

    # the current version kept serving throughout, unchanged
    assert np.array_equal(_scores(current), before)
    assert current.sha256 == v1.sha256 == hashlib.sha256(v1.artifact_path.read_bytes()).hexdigest()
    report_counts(record_property, pctr_versions_refused=len(refused), current_scores_unchanged=True)


def _policy_folder(root, name: str, weights: dict[str, bytes]):
    """A policy version folder written by hand, with a manifest whose hashes all match."""
    d = root / name
    d.mkdir(parents=True)
    files = {"adapter_config.json": json.dumps({"peft_type": "LORA", "r": 8}).encode(), **weights}
    for n, b in files.items():
        (d / n).write_bytes(b)
    sha = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    (d / MANIFEST).write_text(json.dumps({"file_sha256": sha, "sha256": folder_sha256(sha)}))
    return d, folder_sha256(sha)


def test_a_policy_folder_with_pickle_files_is_refused_though_its_hashes_match(tmp_path, kafka_settings, kafka_bootstrap, fresh_topic, record_property):
    from llm_auction.consumers.control import ControlFollower
    from llm_auction.consumers.routing import PolicyRouter
    from llm_auction.infra.kafka import make_producer
    from llm_auction.models.stored_backend import StoredAnswerBackend
    from llm_auction.schemas import PolicyVersion, RolloutEvent, encode

    safe, safe_sha = _policy_folder(tmp_path, "safe", {"adapter_model.safetensors": b"weights"})
    assert verify_folder(safe, safe_sha) == safe_sha
    pickled = {}
    for name in ("adapter_model.bin", "training_args.bin", "model.pt"):
        d, sha = _policy_folder(tmp_path, name.replace(".", "-"), {"adapter_model.safetensors": b"weights", name: b"\x80\x04pickle"})
        with pytest.raises(ArtifactMismatch, match=r"pickle files are not loaded .*" + name.replace(".", r"\.")):
            verify_folder(d, sha)
        pickled[name] = (d, sha)

    pv, ro, dl = fresh_topic("pv", 1), fresh_topic("ro", 1), fresh_topic("dl", 1)
    producer = make_producer(kafka_settings, kafka_bootstrap)
    backend = StoredAnswerBackend()
    follower = ControlFollower(kafka_settings, kafka_bootstrap, backend, PolicyRouter("base"), producer, policy_topic=pv, rollout_topic=ro, dead_letter_topic=dl).start()
    try:
        events = [PolicyVersion(version="v-safe", uri=str(safe), kind="lora", sha256=safe_sha)]
        events += [PolicyVersion(version=f"v-{d.name}", uri=str(d), kind="lora", sha256=sha) for d, sha in pickled.values()]
        for ev in events:
            producer.send(pv, key=ev.version.encode(), value=encode(ev)).get(timeout=10)
        # a rollout to a pickled version: refused, the current routing stays
        bad = events[1].version
        producer.send(ro, key=b"r", value=encode(RolloutEvent(state="canary", stable_version="base", candidate_version=bad, candidate_share=0.5, decided_by="test", reason="pickle"))).get(timeout=10)
        deadline = time.monotonic() + 30
        while not ("v-safe" in follower.loaded and all(e.version in follower.refused for e in events[1:]) and follower.desired is not None):
            assert time.monotonic() < deadline, (follower.loaded, follower.refused)
            follower.apply_pending()
            time.sleep(0.1)
        follower.apply_pending()
    finally:
        follower.stop()
        producer.close()
    assert "v-safe" in backend.versions  # the safetensors-only folder loaded: the check can pass
    assert not any(e.version in backend.versions for e in events[1:])  # no pickled folder reached the backend
    assert all("pickle files are not loaded" in follower.refused[e.version] for e in events[1:])
    assert follower.router.state.stable == "base" and follower.router.state.candidate is None
    report_counts(record_property, pickled_versions_refused=len(events) - 1, safetensors_versions_loaded=1)
