"""The control follower's rules without a broker: verify, load, refuse, wait, route."""

from collections import namedtuple

from llm_auction.consumers.control import ControlFollower
from llm_auction.consumers.routing import PolicyRouter, Routing
from llm_auction.schemas import DeadLetter, RolloutEvent, decode, encode
from llm_auction.schemas.topics import POLICY_VERSIONS, ROLLOUT
from llm_auction.trainer.registry import ModelRegistry

Rec = namedtuple("Rec", "topic partition offset key value")


class Backend:
    def __init__(self):
        self.versions = ["base"]

    def load_policy(self, version, uri, kind="full"):
        self.versions.append(version)


class Producer:
    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None):
        self.sent.append((topic, decode(value, DeadLetter)))

    def flush(self, timeout=None):
        pass


def publish(tmp_path, name="a"):
    src = tmp_path / f"src-{name}"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(name.encode() * 64)
    return ModelRegistry(tmp_path / "reg", "policy").publish(src, extra={"policy_kind": "lora"}).to_event()


def follower():
    return ControlFollower(None, "unused", Backend(), PolicyRouter("base"), Producer())


def feed(f, topic, event, offset=0):
    f._read(Rec(topic, 0, offset, b"k", encode(event)))


def test_a_rollout_waits_for_its_version_then_routes():
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    f, v = follower(), publish(tmp)
    canary = RolloutEvent(stable_version="base", candidate_version=v.version, candidate_share=0.3, state="canary")
    feed(f, ROLLOUT, canary)
    f.apply_pending()
    assert f.router.state == Routing("base") and f.desired == canary  # waits: the version is not loaded yet
    feed(f, POLICY_VERSIONS, v)
    f.apply_pending()
    assert v.version in f.backend.versions and f.router.state == Routing("base", v.version, 0.3, v.version)
    feed(f, POLICY_VERSIONS, v, 1)  # announced again: nothing new
    f.apply_pending()
    assert f.backend.versions.count(v.version) == 1 and not f.producer.sent


def test_an_altered_file_is_refused_dead_lettered_and_the_routing_stays(tmp_path):
    f, v = follower(), publish(tmp_path)
    (tmp_path / "reg" / "policy" / v.version / "adapter_model.safetensors").write_bytes(b"tampered")
    feed(f, POLICY_VERSIONS, v)
    feed(f, ROLLOUT, RolloutEvent(stable_version="base", candidate_version=v.version, candidate_share=0.5, state="canary"))
    f.apply_pending()
    assert f.backend.versions == ["base"] and f.router.state == Routing("base") and v.version in f.refused
    ((topic, dl),) = f.producer.sent
    assert topic == "auction.dead-letter" and "sha256 mismatch for ['adapter_model.safetensors']" in dl.error and dl.source_topic == POLICY_VERSIONS


def test_a_bad_control_event_is_dead_lettered(tmp_path):
    f = follower()
    f._read(Rec(ROLLOUT, 0, 3, b"k", b'{"state": "canary"}'))
    ((_, dl),) = f.producer.sent
    assert dl.offset == 3 and "stable_version" in dl.error


def test_a_mechanism_arm_routes_once_its_versions_are_loaded_or_is_refused_when_unservable(tmp_path):
    f, v = follower(), publish(tmp_path)
    feed(f, ROLLOUT, RolloutEvent(stable_version="base", candidate_version="mosaic:20", candidate_share=0.5, state="canary"))
    f.apply_pending()
    assert f.router.state == Routing("base", "mosaic:20", 0.5, "mosaic:20")  # samples the base model, which is loaded
    f.arm_problem = lambda arm: "needs a pCTR function" if arm.startswith("mosaic") else None
    feed(f, ROLLOUT, RolloutEvent(stable_version="base", candidate_version="mosaic:4", candidate_share=0.2, state="canary"), 1)
    f.apply_pending()
    assert f.router.state.candidate == "mosaic:20"  # refused: the routing stays
    arm = f"policy:{v.version}"
    feed(f, ROLLOUT, RolloutEvent(stable_version="base", candidate_version=arm, candidate_share=0.3, state="canary"), 2)
    f.apply_pending()
    assert f.router.state.candidate == "mosaic:20"  # waits for the version the arm samples
    feed(f, POLICY_VERSIONS, v, 3)
    f.apply_pending()
    assert f.router.state == Routing("base", arm, 0.3, arm)


def test_a_version_read_is_known_before_a_rollout_to_it_is_sent(tmp_path):
    f, v = follower(), publish(tmp_path)
    assert v.version not in f.versions_read
    feed(f, POLICY_VERSIONS, v)
    assert v.version in f.versions_read and f.wait_version_read(v.version, timeout_s=0.1)  # queued: loads before a later rollout applies
    feed(f, ROLLOUT, RolloutEvent(stable_version=f"policy:{v.version}", state="promoted"), 1)
    f.apply_pending()
    assert f.router.state == Routing(f"policy:{v.version}")  # one apply: the version loaded, then the routing
