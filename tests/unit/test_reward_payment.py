"""Eq. 8 reward and Eq. 7 first-price payments: exact values and properties (hypothesis)."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_auction.auction import (
    Allocation,
    allocate,
    payments,
    revenue_per_query,
    reward,
    reward_per_query,
    user_experience_penalty,
)
from llm_auction.auction.reward import AD_COUNT_PENALTY, FORMAT_ERROR_PENALTY
from llm_auction.infra.ddl import migrations

IDS = [f"Ad-{1000 + i}" for i in range(8)]


def test_reward_matches_equation_8_by_hand():
    alloc = Allocation(("Ad-1000", "Ad-1001"), format_error=False)
    bids = {"Ad-1000": 80, "Ad-1001": 20, "Ad-1002": 100}
    pctr = {"Ad-1000": 0.5, "Ad-1001": 0.25}
    # 80*0.5 + 20*0.25 - 10*2^2 = 40 + 5 - 40
    assert reward(alloc, bids, pctr) == pytest.approx(5.0)
    # lambda scales only the penalty
    assert reward(alloc, bids, pctr, lam=0.5) == pytest.approx(45.0 - 20.0)


def test_format_error_costs_500_on_top_of_the_ad_count():
    alloc = Allocation(("Ad-1000",), format_error=True, reasons=("x",))
    assert user_experience_penalty(alloc) == -510.0
    assert reward(alloc, {"Ad-1000": 100}, 1.0) == pytest.approx(100 - 510)


def test_constant_pctr_and_missing_values():
    alloc = Allocation(("Ad-1000",), False)
    assert reward(alloc, {"Ad-1000": 50}, 0.2) == pytest.approx(10 - 10)
    with pytest.raises(KeyError):
        reward(alloc, {"Ad-1000": 50}, {})
    with pytest.raises(ValueError):
        reward(alloc, {"Ad-1000": 50}, {"Ad-1000": 1.5})


def test_no_marker_answer_has_zero_reward_and_no_format_error():
    alloc = allocate("Just a helpful answer.", {"Ad-1000": "Thing"})
    assert reward(alloc, {"Ad-1000": 99}, 0.9) == 0.0 and alloc.format_error is False


def test_first_price_payments():
    alloc = Allocation(("Ad-1000", "Ad-1001"), False)
    bids = {"Ad-1000": 80, "Ad-1001": 20, "Ad-1002": 100}
    assert payments(alloc, bids, {"Ad-1000": True, "Ad-1001": False}) == {"Ad-1000": 80.0, "Ad-1001": 0.0}
    # a click naming an ad that was not exposed pays nothing and is not billed
    assert payments(alloc, bids, ["Ad-1002"]) == {"Ad-1000": 0.0, "Ad-1001": 0.0}


def test_batch_metrics():
    assert revenue_per_query([{"a": 10.0, "b": 0.0}, {}, {"c": 50.0}]) == pytest.approx(20.0)
    assert reward_per_query([1.0, -3.0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        revenue_per_query([])


allocations = st.builds(
    lambda ids, fe: Allocation(tuple(ids), fe),
    st.lists(st.sampled_from(IDS), unique=True, max_size=5),
    st.booleans(),
)
bid_maps = st.fixed_dictionaries({i: st.integers(1, 100) for i in IDS})
pctr_maps = st.fixed_dictionaries({i: st.floats(0, 1) for i in IDS})


@given(allocations, bid_maps, pctr_maps, st.sampled_from(IDS), st.integers(1, 100), st.integers(1, 100))
def test_reward_is_linear_in_each_bid(alloc, bids, pctr, ad, b1, b2):
    r = lambda b: reward(alloc, {**bids, ad: b}, pctr)  # noqa: E731
    slope = pctr[ad] if ad in alloc.exposed else 0.0
    assert r(b2) - r(b1) == pytest.approx(slope * (b2 - b1), abs=1e-9)


@given(allocations, bid_maps, st.lists(st.sampled_from(IDS)))
def test_payments_never_exceed_bids_and_only_exposed_pay(alloc, bids, clicked):
    pay = payments(alloc, bids, clicked)
    assert set(pay) == set(alloc.exposed)
    for a, p in pay.items():
        assert 0 <= p <= bids[a]
        assert p == (bids[a] if a in clicked else 0)


@given(st.text(alphabet=st.characters(blacklist_characters="@"), max_size=300))
def test_text_without_at_signs_or_ids_has_no_error(text):
    alloc = allocate(text.replace("Ad-", "ad "), {"Ad-1000": "Thing"})
    assert alloc.exposed == () and alloc.format_error is False
    assert reward(alloc, {"Ad-1000": 10}, 0.5) == 0.0


def test_the_warehouse_views_charge_the_same_penalty():
    # the reward_per_query views compute Eq. 8's penalty in SQL (lambda = 1); migrations are frozen
    # once applied, so this test is what keeps their constants equal to reward.py's
    expected = f"-{AD_COUNT_PENALTY:g} * n_ads * n_ads - {FORMAT_ERROR_PENALTY:g} * format_error"
    found = [t for m in migrations() for t in re.findall(r"sum\((.*?)\) AS penalty", m.sql)]
    assert found and all(t == expected for t in found), found
    a = Allocation(("Ad-1000", "Ad-1001"), True, ())
    assert user_experience_penalty(a) == eval(expected, {"n_ads": a.n_ads, "format_error": int(a.format_error)})  # noqa: S307
