"""The trainer service's logic around an epoch (trainer/service.py, trainer/epoch_setup.py): a request
is trained once, announced once, a served request is recognised from the registry (also after a
crash between publication and announcement), an unservable one is dead-lettered. The epoch is a
stand-in here (it publishes a small LoRA-shaped folder into a real registry); the real epoch, broker
and stream app are in tests/integration/test_irpo_from_stream.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_auction.schemas import DeadLetter, EpochRequest, PolicyVersion, decode
from llm_auction.producers.versions import announce
from llm_auction.schemas.settings import Settings
from llm_auction.trainer.epoch_setup import generation, next_queries
from llm_auction.trainer.irpo_config import IRPOConfig
from llm_auction.trainer.registry import ModelRegistry
from llm_auction.trainer.service import EpochTrainer, request_window, served_by, served_record


class Sent:
    def __init__(self):
        self.records: list[tuple[str, bytes]] = []

    def send(self, topic, key=None, value=None):
        self.records.append((topic, value))
        return self

    def get(self, timeout=None):
        return None

    def flush(self, timeout=None):
        return None

    def on(self, topic: str) -> list[bytes]:
        return [v for t, v in self.records if t == topic]


@dataclass
class Result:
    manifest: object


def adapter(d: Path, weights: bytes) -> Path:
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(weights)
    (d / "adapter_config.json").write_text('{"r": 8}')
    return d


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "registry"
    pctr = ModelRegistry(root, "pctr")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    pctr.publish([tmp_path / "model.onnx"])  # pctr-0001
    policy = ModelRegistry(root, "policy")
    calls: list[tuple[str, dict]] = []

    def run_epoch(request: EpochRequest, extra: dict):
        calls.append((request.event_id, extra))
        if request.pctr_version == "pctr-0001" and request.parent_version == "policy-0009":
            return Result(None)
        folder = adapter(tmp_path / f"work-{len(calls)}", f"weights-{len(calls)}".encode())
        parent = None if request.parent_version == "base" else request.parent_version
        m = policy.publish(folder, parent=parent, data_window=extra, main="adapter_model.safetensors",
                           extra={"policy_kind": "lora", "pctr_version": request.pctr_version})
        return Result(m)

    producer = Sent()
    trainer = EpochTrainer(Settings(), "unused:9092", policy, run_epoch, producer, lambda m: announce(policy, m, producer, "versions"), dead_letter_topic="dlq")
    return trainer, policy, producer, calls


def test_a_request_is_trained_once_and_announced_once(setup):
    trainer, policy, producer, calls = setup
    r = EpochRequest.new("base", "pctr-0001", impressions_total=500, impressions_since_last=500, requested_by="app")
    m = trainer.handle(r)
    assert m.version == "policy-0001" and len(calls) == 1 and calls[0][1] == {"request": request_window(r)}
    assert m.data_window["request"]["request_id"] == r.event_id and m.extra["pctr_version"] == "pctr-0001" and m.parent is None
    again = trainer.handle(EpochRequest.new("base", "pctr-0001", impressions_total=900, impressions_since_last=900))  # a re-sent trigger
    assert again.version == m.version and len(calls) == 1 and len(policy.list()) == 1
    events = [decode(v, PolicyVersion) for v in producer.on("versions")]
    assert [e.version for e in events] == ["policy-0001"] and trainer.stats.already_served == [r.event_id]
    assert trainer.stats.trained == ["policy-0001"] and trainer.stats.announced == ["policy-0001"]
    rec = served_record(policy, r.event_id)
    assert (rec["outcome"], rec["version"], rec["parent_version"], rec["pctr_version"]) == ("published", "policy-0001", "base", "pctr-0001")


def test_a_crash_between_publication_and_announcement_announces_on_redelivery(setup, tmp_path):
    trainer, policy, producer, calls = setup
    r = EpochRequest.new("base", "pctr-0001", impressions_total=1, impressions_since_last=1)
    m = policy.publish(adapter(tmp_path / "earlier", b"w"), data_window={"request": request_window(r)}, main="adapter_model.safetensors", extra={"policy_kind": "lora"})
    assert served_by(policy, r.event_id).version == m.version and not policy.is_announced(m.version)
    trainer.handle(r)
    assert calls == [] and [decode(v, PolicyVersion).version for v in producer.on("versions")] == [m.version] and policy.is_announced(m.version)
    assert served_record(policy, r.event_id)["version"] == m.version  # recorded on the way


def test_unservable_requests_are_dead_lettered_and_an_epoch_without_pairs_publishes_nothing(setup, tmp_path):
    trainer, policy, producer, calls = setup
    unknown_parent = EpochRequest.new("policy-0042", "pctr-0001", impressions_total=1, impressions_since_last=1)
    assert trainer.handle(unknown_parent) is None
    assert trainer.handle(EpochRequest.new("base", "pctr-0007", impressions_total=1, impressions_since_last=1)) is None
    dls = [decode(v, DeadLetter) for v in producer.on("dlq")]
    assert calls == [] and len(dls) == 2 and "policy-0042" in dls[0].error and "pctr-0007" in dls[1].error
    assert served_record(policy, unknown_parent.event_id)["outcome"] == "refused"
    assert trainer.handle(unknown_parent) is None and len(producer.on("dlq")) == 2  # re-delivered: refused once
    # with the oracle reward the pCTR version is not needed
    assert trainer.problem(EpochRequest.new("base", "pctr-0007", impressions_total=1, impressions_since_last=1), oracle=True) is None
    policy.publish(adapter(tmp_path / "p", b"p"), main="adapter_model.safetensors", extra={"policy_kind": "lora"})  # policy-0001
    for n in range(2, 10):
        policy.publish(adapter(tmp_path / f"p{n}", f"p{n}".encode()), parent=f"policy-{n - 1:04d}", main="adapter_model.safetensors", extra={"policy_kind": "lora"})
    no_pairs = EpochRequest.new("policy-0009", "pctr-0001", impressions_total=1, impressions_since_last=1)
    assert trainer.handle(no_pairs) is None
    assert trainer.stats.no_pairs == 1 and len(policy.list()) == 9 and producer.on("versions") == []
    assert served_record(policy, no_pairs.event_id)["outcome"] == "no_pairs" and len(calls) == 1
    assert trainer.handle(no_pairs) is None and len(calls) == 1  # re-delivered: the epoch is not run again


def test_successive_generations_take_new_offline_queries(tmp_path):
    policy = ModelRegistry(tmp_path, "policy")
    policy.publish(adapter(tmp_path / "a", b"a"), main="adapter_model.safetensors", extra={"policy_kind": "lora"})
    policy.publish(adapter(tmp_path / "b", b"b"), parent="policy-0001", main="adapter_model.safetensors", extra={"policy_kind": "lora"})
    assert [generation(policy, p) for p in (None, "policy-0001", "policy-0002")] == [0, 1, 2]
    cfg = IRPOConfig(queries=40, query_offset=10)
    assert [next_queries(cfg, 160, g).query_offset for g in range(5)] == [10, 50, 90, 9, 49]  # 121 valid offsets: 0..120
    assert next_queries(cfg, 40, 3).query_offset == 0
