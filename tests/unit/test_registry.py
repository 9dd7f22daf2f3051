"""The versioned model registry: monotonic versions, atomic publish, dedup by content + window."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from llm_auction.schemas import PctrVersion, PolicyVersion, decode, encode
from llm_auction.trainer.registry import ModelRegistry, sha256_file

WINDOW = {"rows": 100, "start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T01:00:00+00:00"}


def artifact(tmp_path, name: str, content: bytes):
    d = tmp_path / f"src-{hashlib.md5(content).hexdigest()[:8]}"
    d.mkdir(exist_ok=True)
    (d / "model.onnx").write_bytes(content)
    (d / "model.json").write_text(json.dumps({"name": name}))
    return d


def test_versions_are_monotonic_and_manifest_hashes_the_file(tmp_path):
    reg = ModelRegistry(tmp_path / "reg", "pctr")
    assert reg.list() == [] and reg.latest() is None
    published = []
    for i in range(3):
        src = artifact(tmp_path, f"m{i}", f"weights {i}".encode())
        published.append(reg.publish(src, metrics={"auc": 0.7 + i / 100}, parent=published[-1].version if published else None, data_window={**WINDOW, "rows": i}))
    assert [m.version for m in published] == ["pctr-0001", "pctr-0002", "pctr-0003"]
    assert [m.parent for m in published] == [None, "pctr-0001", "pctr-0002"]
    m = reg.get("pctr-0002")
    on_disk = json.loads((tmp_path / "reg" / "pctr" / "pctr-0002" / "manifest.json").read_text())
    assert on_disk["sha256"] == hashlib.sha256(b"weights 1").hexdigest() == sha256_file(m.artifact_path) == m.sha256
    assert on_disk["artifact"] == "model.onnx" and on_disk["files"] == ["model.json", "model.onnx"]
    assert on_disk["metrics"] == {"auc": 0.71} and on_disk["data_window"]["rows"] == 1 and on_disk["promoted"] is True
    assert (m.path / "model.json").exists()
    assert [x.version for x in reg.list()] == ["pctr-0001", "pctr-0002", "pctr-0003"]
    # a version removed by hand never gets its number reused: numbers only go up
    import shutil

    shutil.rmtree(m.path)
    assert reg.publish(artifact(tmp_path, "m9", b"weights 9"), data_window=WINDOW).version == "pctr-0004"


def test_same_content_and_window_returns_the_existing_version(tmp_path):
    reg = ModelRegistry(tmp_path, "pctr")
    first = reg.publish(artifact(tmp_path, "a", b"same bytes"), metrics={"auc": 0.7}, data_window=WINDOW)
    again = reg.publish(artifact(tmp_path, "b", b"same bytes"), metrics={"auc": 0.7}, data_window=dict(WINDOW))
    assert again.version == first.version and len(reg.list()) == 1
    # same bytes on another data window, or other bytes on the same window: new versions
    assert reg.publish(artifact(tmp_path, "a", b"same bytes"), data_window={**WINDOW, "rows": 101}).version == "pctr-0002"
    assert reg.publish(artifact(tmp_path, "c", b"other bytes"), data_window=WINDOW).version == "pctr-0003"


def test_latest_respects_promoted_only_and_set_promoted(tmp_path):
    reg = ModelRegistry(tmp_path, "pctr")
    a = reg.publish(artifact(tmp_path, "a", b"a"), promoted=True)
    b = reg.publish(artifact(tmp_path, "b", b"b"), promoted=False)
    assert reg.latest().version == a.version
    assert reg.latest(promoted_only=False).version == b.version
    reg.set_promoted(b.version, True)
    assert reg.latest().version == b.version
    reg.set_promoted(b.version, False)
    reg.set_promoted(a.version, False)
    assert reg.latest() is None


def test_failed_publish_leaves_nothing_and_bad_names_raise(tmp_path):
    reg = ModelRegistry(tmp_path, "pctr")
    with pytest.raises(FileNotFoundError):
        reg.publish({"model.onnx": tmp_path / "missing.onnx"})
    with pytest.raises(ValueError):
        reg.publish(artifact(tmp_path, "a", b"a"), main="nope.bin")
    with pytest.raises(FileNotFoundError):
        reg.get("pctr-0042")
    with pytest.raises(ValueError):
        reg.get("policy-0001")
    with pytest.raises(ValueError):
        ModelRegistry(tmp_path, "embeddings")  # type: ignore[arg-type]
    assert reg.list() == []
    left = list((tmp_path / "pctr").iterdir()) if (tmp_path / "pctr").exists() else []
    assert [p.name for p in left if p.name != ".lock"] == []


def test_concurrent_publishers_get_distinct_increasing_versions(tmp_path):
    reg = ModelRegistry(tmp_path, "pctr")
    srcs = [artifact(tmp_path, f"m{i}", f"w{i}".encode()) for i in range(8)]
    got: list[str] = []
    lock = threading.Lock()

    def pub(src):
        v = ModelRegistry(tmp_path, "pctr").publish(src).version
        with lock:
            got.append(v)

    threads = [threading.Thread(target=pub, args=(s,)) for s in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"pctr-{i:04d}" for i in range(1, 9)]
    assert [p.name for p in (tmp_path / "pctr").iterdir() if p.name.startswith(".tmp")] == []
    assert len({m.sha256 for m in reg.list()}) == 8


def test_to_event_builds_the_wire_events(tmp_path):
    reg = ModelRegistry(tmp_path, "pctr")
    m = reg.publish(artifact(tmp_path, "a", b"onnx"), metrics={"auc": 0.75, "note": "text is dropped", "bad": float("nan")}, n_train=1234, data_window=WINDOW)
    ev = m.to_event()
    assert isinstance(ev, PctrVersion)
    assert ev.version == "pctr-0001" and ev.sha256 == hashlib.sha256(b"onnx").hexdigest() and ev.n_train == 1234
    assert ev.metrics == {"auc": 0.75} and ev.promoted is True
    assert ev.onnx_uri.startswith("file://") and ev.onnx_uri.endswith("/pctr/pctr-0001/model.onnx")
    assert decode(encode(ev), PctrVersion) == ev
    # announcing the same version twice gives the same event id (consumers dedup on it)
    assert reg.get("pctr-0001").to_event().event_id == ev.event_id
    assert reg.set_promoted("pctr-0001", False).to_event().event_id != ev.event_id

    pol = ModelRegistry(tmp_path, "policy")
    d = lora_folder(tmp_path / "policy-src")
    pm = pol.publish(d, main="adapter_model.safetensors", extra={"policy_kind": "lora", "base_model": "smollm2", "pctr_version": "pctr-0001"})
    assert pm.version == "policy-0001" and (pm.path / "adapter_model.safetensors").read_bytes() == b"lora"
    pev = pm.to_event()
    assert isinstance(pev, PolicyVersion) and pev.kind == "lora" and pev.base_model == "smollm2" and pev.pctr_version == "pctr-0001"
    # a plain folder path, what load_policy(version, uri, kind="lora") opens
    assert not pev.uri.startswith("file:") and Path(pev.uri) == pm.path.resolve() and (Path(pev.uri) / "adapter_config.json").exists()
    assert pev.sha256 == pm.sha256 and decode(encode(pev), PolicyVersion) == pev


def lora_folder(d: Path, weights: bytes = b"lora", audit: bytes = b"samples") -> Path:
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(weights)
    (d / "adapter_config.json").write_text('{"r": 8}')
    (d / "irpo_samples.parquet").write_bytes(audit)
    return d


def test_policy_identity_is_a_hash_over_every_file(tmp_path):
    from llm_auction.trainer.registry import folder_sha256, sha256_file

    pol = ModelRegistry(tmp_path / "reg", "policy")
    a = pol.publish(lora_folder(tmp_path / "a"), extra={"policy_kind": "lora"})
    assert a.file_sha256 == {n: sha256_file(a.path / n) for n in ("adapter_config.json", "adapter_model.safetensors", "irpo_samples.parquet")}
    assert a.sha256 == folder_sha256(a.file_sha256) != a.file_sha256["adapter_model.safetensors"]
    # same weights, another audit file: another version (the README-only hash of a PEFT folder would not see it)
    b = pol.publish(lora_folder(tmp_path / "b", audit=b"other samples"), extra={"policy_kind": "lora"})
    assert b.version == "policy-0002" and b.sha256 != a.sha256
    # the same folder again is the same version
    assert pol.publish(lora_folder(tmp_path / "c"), extra={"policy_kind": "lora"}).version == "policy-0001"


def test_policy_refuses_pickle_and_incomplete_adapters(tmp_path):
    pol = ModelRegistry(tmp_path / "reg", "policy")
    d = lora_folder(tmp_path / "a")
    (d / "training_args.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickle"):
        pol.publish(d, extra={"policy_kind": "lora"})
    e = tmp_path / "e"
    e.mkdir()
    (e / "adapter_model.safetensors").write_bytes(b"w")
    with pytest.raises(ValueError, match="adapter_config.json"):
        pol.publish(e, extra={"policy_kind": "lora"})
    assert pol.list() == []


def test_pctr_refuses_pickle_weights(tmp_path):
    reg = ModelRegistry(tmp_path / "reg", "pctr")
    src = artifact(tmp_path, "m", b"onnx")
    (src / "model.pt").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickle"):
        reg.publish(src)
    assert reg.list() == []


def test_announcement_is_recorded_outside_the_version(tmp_path):
    pol = ModelRegistry(tmp_path / "reg", "policy")
    m = pol.publish(lora_folder(tmp_path / "a"), extra={"policy_kind": "lora"})
    assert not pol.is_announced(m.version)
    pol.mark_announced(m.version, m.event_id(), "auction.policy-versions")
    assert pol.is_announced(m.version)
    assert sorted(p.name for p in m.path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "irpo_samples.parquet", "manifest.json"]
    assert [v.version for v in pol.list()] == ["policy-0001"]


def test_a_crash_while_copying_publishes_nothing(tmp_path, monkeypatch):
    import llm_auction.trainer.registry as registry_mod

    reg = ModelRegistry(tmp_path, "pctr")
    real_copy = registry_mod.shutil.copyfile
    calls = {"n": 0}

    def flaky(src, dst, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_copy(src, dst, *a, **kw)

    monkeypatch.setattr(registry_mod.shutil, "copyfile", flaky)
    with pytest.raises(OSError):
        reg.publish(artifact(tmp_path, "a", b"a"))
    assert reg.list() == [] and reg.latest(promoted_only=False) is None
    assert [p.name for p in (tmp_path / "pctr").iterdir() if p.name != ".lock"] == []
    monkeypatch.setattr(registry_mod.shutil, "copyfile", real_copy)
    assert reg.publish(artifact(tmp_path, "a", b"a")).version == "pctr-0001"


def test_announce_sends_once_unless_asked_again_with_the_same_event_id(tmp_path):
    from llm_auction.producers.versions import announce

    class Sent:
        def __init__(self):
            self.events = []

        def send(self, topic, key=None, value=None):
            self.events.append((topic, value))
            return self

        def get(self, timeout=None):
            return None

        def flush(self, timeout=None):
            pass

    pol, producer = ModelRegistry(tmp_path / "reg", "policy"), Sent()
    m = pol.publish(lora_folder(tmp_path / "a"), extra={"policy_kind": "lora"})
    assert announce(pol, m, producer) and not announce(pol, m, producer)  # once
    assert announce(pol, m, producer, again=True)  # a new broker's followers never saw it
    assert len(producer.events) == 2 and producer.events[0] == producer.events[1]  # the same event: consumers dedup it
