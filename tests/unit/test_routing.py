"""The router: a user's arm follows the salted stable hash, and raising the share only adds users."""

import pytest

from llm_auction.consumers.routing import BUCKETS, PolicyRouter, Routing, bucket
from llm_auction.schemas import RolloutEvent
from llm_auction.schemas.ids import stable_hash

USERS = [f"user-{i}" for i in range(4000)]


def test_candidate_iff_the_salted_hash_falls_below_the_share():
    r = PolicyRouter("base", "policy-0001", 0.1, salt="s1")
    got = r.versions_for(USERS)
    assert got == ["policy-0001" if stable_hash("s1", u) % 10_000 < 1000 else "base" for u in USERS]
    assert 0.08 < got.count("policy-0001") / len(USERS) < 0.12
    assert r.versions_for(USERS) == got  # the same user, the same version, every time


def test_raising_the_share_keeps_every_canary_user_in_the_canary_and_the_salt_reshuffles():
    low = set(u for u in USERS if PolicyRouter("base", "c", 0.1, "s").version_for(u) == "c")
    high = set(u for u in USERS if PolicyRouter("base", "c", 0.3, "s").version_for(u) == "c")
    other = set(u for u in USERS if PolicyRouter("base", "c", 0.1, "t").version_for(u) == "c")
    assert low < high and low != other


def test_shares_zero_and_one_and_the_default_salt():
    assert set(PolicyRouter("base", "c", 0.0).versions_for(USERS)) == {"base"}
    assert set(PolicyRouter("base", "c", 1.0).versions_for(USERS)) == {"c"}
    assert PolicyRouter("base", "c", 0.5).state.salt == "c" and Routing("base", "c", 0.5).threshold == BUCKETS // 2
    with pytest.raises(ValueError):
        Routing("base", None, 0.2)
    with pytest.raises(ValueError):
        Routing("base", "c", 1.2)


def test_rollout_events_set_the_routing():
    r = PolicyRouter("base")
    r.apply(RolloutEvent(stable_version="base", candidate_version="c", candidate_share=0.25, state="canary", salt="k"))
    assert r.state == Routing("base", "c", 0.25, "k") and r.state.serving() == {"base", "c"}
    assert [bucket("k", u) < 2500 for u in USERS] == [v == "c" for v in r.versions_for(USERS)]
    r.apply(RolloutEvent(stable_version="base", candidate_version="c", candidate_share=0.0, state="rolled_back"))
    assert set(r.versions_for(USERS)) == {"base"} and r.state.serving() == {"base"}
    r.apply(RolloutEvent(stable_version="c", state="promoted"))
    assert set(r.versions_for(USERS)) == {"c"} and r.stable == "c"
    # inconclusive routes like rolled_back: the candidate is out, whatever share the event names
    r.apply(RolloutEvent(stable_version="c", candidate_version="d", candidate_share=0.3, state="inconclusive"))
    assert set(r.versions_for(USERS)) == {"c"} and r.state == Routing("c", None, 0.0, "d")
