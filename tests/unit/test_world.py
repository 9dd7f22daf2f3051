"""The synthetic world generator: sizes, determinism, bid ranges, splits."""

import hashlib
import json

import pytest

from llm_auction.producers.world import World, WorldSpec, generate_world


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    manifest = generate_world(out, WorldSpec(seed=3, n_users=60, queries_per_user=5, n_test=60), progress=False)
    return out, manifest


def test_sizes_and_split(small_world):
    out, m = small_world
    assert (m["n_users"], m["n_queries"], m["n_train"], m["n_test"]) == (60, 300, 240, 60)
    w = World(out)
    assert len(w.ads) == 100 and len(w.profiles) == 60
    assert sum(1 for _ in w.records("test")) == 60 and sum(1 for _ in w.records("train")) == 240


def test_profiles_have_2_to_5_interests_and_queries_are_distinct_per_user(small_world):
    out, _ = small_world
    w = World(out)
    assert all(2 <= len(p.interests) <= 5 for p in w.profiles.values())
    by_user: dict[str, list[str]] = {}
    for r in w.records():
        by_user.setdefault(r.user_id, []).append(r.query)
    assert all(len(qs) == 5 and len(set(qs)) == 5 for qs in by_user.values())


def test_bids_are_integers_in_1_100_and_vary(small_world):
    out, _ = small_world
    bids = [b for r in World(out).records() for b in r.bids]
    assert len(bids) == 300 * 100
    assert min(bids) == 1 and max(bids) == 100
    assert 45 < sum(bids) / len(bids) < 56  # uniform mean 50.5


def test_same_seed_same_bytes_other_seed_differs(tmp_path, small_world):
    _, m = small_world
    again = generate_world(tmp_path / "a", WorldSpec(seed=3, n_users=60, queries_per_user=5, n_test=60), progress=False)
    other = generate_world(tmp_path / "b", WorldSpec(seed=4, n_users=60, queries_per_user=5, n_test=60), progress=False)
    assert again["sha256"] == m["sha256"]
    assert other["sha256"]["queries.jsonl"] != m["sha256"]["queries.jsonl"]
    assert hashlib.sha256((tmp_path / "a" / "queries.jsonl").read_bytes()).hexdigest() == m["sha256"]["queries.jsonl"]


def test_record_becomes_a_query_event_with_all_candidates(small_world):
    out, _ = small_world
    w = World(out)
    rec = next(w.records("test"))
    ev = w.event(rec)
    assert ev.query_id == rec.query_id and ev.split == "test" and len(ev.candidates) == 100
    assert [c.bid for c in ev.candidates] == list(rec.bids)
    fresh = w.event(rec, bids=[7] * 100, query_id="live-1")
    assert fresh.query_id == "live-1" and {c.bid for c in fresh.candidates} == {7}
    with pytest.raises(ValueError, match="bids"):
        w.event(rec, bids=[1, 2])


def test_missing_world_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a world folder"):
        World(tmp_path)


def test_too_many_test_queries_rejected(tmp_path):
    with pytest.raises(ValueError, match="n_test"):
        generate_world(tmp_path, WorldSpec(n_users=2, queries_per_user=5, n_test=11), progress=False)


def test_a_validation_split_is_taken_from_train_and_leaves_test_and_bids_alone(tmp_path):
    from llm_auction.producers.world import World

    plain = generate_world(tmp_path / "a", WorldSpec(seed=3, n_users=60, queries_per_user=5, n_test=60), progress=False)
    split = generate_world(tmp_path / "b", WorldSpec(seed=3, n_users=60, queries_per_user=5, n_test=60, n_validation=20), progress=False)
    assert (split["n_train"], split["n_validation"], split["n_test"]) == (220, 20, 60) and plain["n_validation"] == 0
    a, b = list(World(tmp_path / "a").records()), list(World(tmp_path / "b").records())
    assert [(r.query_id, r.query, r.bids) for r in a] == [(r.query_id, r.query, r.bids) for r in b]
    assert [r.query_id for r in a if r.split == "test"] == [r.query_id for r in b if r.split == "test"]
    val = [r for r, s in zip(a, b) if s.split == "validation"]
    assert len(val) == 20 and all(r.split == "train" for r in val)
    with pytest.raises(ValueError, match="n_validation"):
        generate_world(tmp_path / "c", WorldSpec(seed=3, n_users=60, queries_per_user=5, n_test=60, n_validation=241), progress=False)
