"""The embedding click model: the paper's examples, the four criteria, the sampler's calibration.

One real MiniLM encoder is shared by the module (loading it is most of the cost).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm_auction.auction import allocate, reward
from llm_auction.models.user_sim import UserSimulator, click_event_id, make_user_simulator
from llm_auction.models.user_sim import examples as ex
from llm_auction.models.user_sim.embedding import HELD_OUT_JUDGE, ClickModelConfig, EmbeddingUserSimulator
from llm_auction.schemas import CandidateAd, QueryEvent, ResponseEvent, UserProfile
from llm_auction.schemas.catalog import load_catalog

pytestmark = pytest.mark.integration  # loads MiniLM

CATALOG = {a.ad_id: a for a in load_catalog()}


@pytest.fixture(scope="module")
def encoder(text_encoder):
    """The session's MiniLM (tests/conftest.py): loaded once, its cache shared."""
    return text_encoder


@pytest.fixture(scope="module", params=["training", "judge"])
def sim(encoder, request):
    """Every paper example and calibration check runs under the training click model and under
    the held-out judge (HELD_OUT_JUDGE): both are valid click models, with different weights."""
    return EmbeddingUserSimulator(encoder, ClickModelConfig() if request.param == "training" else HELD_OUT_JUDGE, seed=11)


def make_query(query: str, profile: UserProfile, qid: str = "q-1") -> QueryEvent:
    cands = [CandidateAd(**a.model_dump(), bid=1 + i % 100) for i, a in enumerate(CATALOG.values())]
    return QueryEvent(query_id=qid, user=profile, query=query, candidates=cands)


def make_response(query: str, profile: UserProfile, answer: str, event_id: str = "r-1", qid: str = "q-1") -> ResponseEvent:
    q = make_query(query, profile, qid)
    alloc = allocate(answer, q.candidates)
    return ResponseEvent.for_query(
        event_id=event_id, query_id=qid, policy_version="p0", query=q, text=answer, exposed_ad_ids=list(alloc.exposed),
        n_ads=alloc.n_ads, format_error=alloc.format_error, format_reasons=list(alloc.reasons),
    )


def p_of(sim, query, profile, answer, ad_id):
    return sim.click_probabilities(make_response(query, profile, answer))[ad_id]


def swap(text: str, old_id: str, new_id: str) -> str:
    return text.replace(CATALOG[old_id].title, CATALOG[new_id].title).replace(old_id, new_id)


def drop_marker(text: str, ad_id: str) -> str:
    """The answer with one ad's marker removed (its prose kept)."""
    from llm_auction.auction import parse_ads

    m = next(m for m in parse_ads(text) if m.ad_id == ad_id)
    return text[: m.start] + text[m.end :]


# ---------- the paper's examples ----------
def test_table1_coffee_cup_is_likely_clicked_and_a_sofa_in_its_place_is_not(sim):
    cup = p_of(sim, ex.TABLE1_QUERY, ex.TABLE1_PROFILE, ex.TABLE1_ANSWER, "Ad-4820")
    sofa = p_of(sim, ex.TABLE1_QUERY, ex.TABLE1_PROFILE, swap(ex.TABLE1_ANSWER, "Ad-4820", "Ad-9420"), "Ad-9420")
    assert 0.3 <= cup <= 0.7, cup
    assert sofa < 0.06 and cup > 6 * sofa, (cup, sofa)


def test_table3_vitamin_b12_beats_the_sofa_for_the_soup_question(sim):
    b12 = p_of(sim, ex.TABLE3_QUERY, ex.FAMILY_PROFILE, ex.TABLE3_AUCTION, "Ad-6542")
    sofa = p_of(sim, ex.TABLE3_QUERY, ex.FAMILY_PROFILE, ex.TABLE3_PRETRAINED, "Ad-9420")
    # The same slot and prose, only the ad changed: relevance alone decides.
    sofa_same_slot = p_of(sim, ex.TABLE3_QUERY, ex.FAMILY_PROFILE, swap(ex.TABLE3_AUCTION, "Ad-6542", "Ad-9420"), "Ad-9420")
    assert b12 >= 0.2, b12
    assert sofa < 0.05 and sofa_same_slot < 0.05, (sofa, sofa_same_slot)
    assert b12 > 5 * max(sofa, sofa_same_slot)


def test_table4_in_flow_beats_appended_below_the_conclusion(sim):
    appended = p_of(sim, ex.TABLE4_QUERY, ex.FAMILY_PROFILE, ex.TABLE4_PRETRAINED, "Ad-7633")
    in_flow_text = drop_marker(swap(ex.TABLE4_AUCTION, "Ad-4064", "Ad-7633"), "Ad-7444")
    in_flow = p_of(sim, ex.TABLE4_QUERY, ex.FAMILY_PROFILE, in_flow_text, "Ad-7633")
    assert in_flow > 2 * appended, (in_flow, appended)
    # A relevant ad (the tent) with the same sentence in the two places: only the placement moves.
    tent = "The @Naturehike Cloud-Up 2-Person Tent@[Ad-1654] is a practical choice for family camping, roomy and quick to pitch."
    body, _, _ = ex.TABLE4_PRETRAINED.rpartition("\n\n")
    appended_text = body + "\n\n" + tent
    first_item_end = body.index("\n2. ")
    in_flow_tent = body[:first_item_end] + " " + tent + body[first_item_end:]
    tent_appended = p_of(sim, ex.TABLE4_QUERY, ex.FAMILY_PROFILE, appended_text, "Ad-1654")
    tent_in_flow = p_of(sim, ex.TABLE4_QUERY, ex.FAMILY_PROFILE, in_flow_tent, "Ad-1654")
    assert tent_in_flow > 1.5 * tent_appended and tent_in_flow > 0.1, (tent_in_flow, tent_appended)
    feats = {f.ad_id: f for f in sim.explain(make_response(ex.TABLE4_QUERY, ex.FAMILY_PROFILE, ex.TABLE4_PRETRAINED))}
    assert feats["Ad-7633"].appended


def test_table5_competing_teas_each_lose_to_being_alone_and_never_both_clicked(sim):
    both = make_response(ex.TABLE5_QUERY, ex.ELDER_PROFILE, ex.TABLE5_PRETRAINED_BOTH)
    p_both = sim.click_probabilities(both)
    alone_ginseng = p_of(sim, ex.TABLE5_QUERY, ex.ELDER_PROFILE, drop_marker(ex.TABLE5_PRETRAINED_BOTH, "Ad-2489"), "Ad-3356")
    alone_prog = p_of(sim, ex.TABLE5_QUERY, ex.ELDER_PROFILE, drop_marker(ex.TABLE5_PRETRAINED_BOTH, "Ad-3356"), "Ad-2489")
    assert p_both["Ad-3356"] < alone_ginseng and p_both["Ad-2489"] < alone_prog, (p_both, alone_ginseng, alone_prog)
    assert sum(p_both.values()) <= max(alone_ginseng, alone_prog) + 1e-9
    feats = sim.explain(both)
    assert feats[0].competitors == ("Ad-3356",) and feats[0].group == feats[1].group
    draws = sim.clicks_batch([both.model_copy(update={"event_id": f"t5-{i}"}) for i in range(400)])
    assert all(sum(c.clicked for c in cs) <= 1 for cs in draws)
    assert sum(c.clicked for cs in draws for c in cs) > 100  # clicks do happen: one of the two


def test_a_relevant_ad_woven_in_beats_the_same_ad_in_unrelated_prose(sim):
    cup_flow = p_of(sim, ex.TABLE1_QUERY, ex.TABLE1_PROFILE, ex.TABLE1_ANSWER, "Ad-4820")
    last = ex.TABLE1_ANSWER.rindex("\n\n")
    off = ex.TABLE1_ANSWER[:last] + (
        "\n\nTax filing season starts soon, and the municipal parking rules changed last month. "
        "The [@Dutch-imported Oriental Floral Coffee Cup@ \\[Ad-4820\\]](#) is listed next to the permit renewal forms at the city office."
    )
    p_off = p_of(sim, ex.TABLE1_QUERY, ex.TABLE1_PROFILE, off, "Ad-4820")
    assert p_off < 0.75 * cup_flow, (p_off, cup_flow)


# ---------- flooding, format errors, monotonicity ----------
_TENT = "@Naturehike Cloud-Up 2-Person Tent@[Ad-1654]"
_EXTRA = ["@Coleman Classic Portable Camping Stove@[Ad-9272]", "@Osprey Talon 22 Daypack@[Ad-6193]",
          "@Kindle Paperwhite 16GB E-Reader@[Ad-5998]", "@Catan Board Game@[Ad-2558]"]


def _camping_answer(n_ads: int) -> str:
    sentences = [
        f"For a first family camping weekend near Shanghai, pick a site with toilets and shade; a roomy tent like the {_TENT} sets up in minutes.",
        f"Cooking outdoors is half the fun, and the {_EXTRA[0]} boils water fast for tea and noodles.",
        f"For the short hike to the lake, carry water and snacks in the {_EXTRA[1]} so your hands stay free.",
        f"In the evening by the lantern, reading together is lovely with the {_EXTRA[2]} for the kids' stories.",
        f"When it rains, a game like the {_EXTRA[3]} keeps everyone cheerful inside the tent.",
    ]
    out = sentences[:n_ads] + [_strip_markers(s) for s in sentences[n_ads:]]
    return " ".join(out) + " Check the weather forecast, and bring warm layers for the night."


def _strip_markers(s: str) -> str:
    from llm_auction.auction import parse_ads

    for m in reversed(parse_ads(s)):
        s = s[: m.start] + (m.title or "") + s[m.end :]
    return s


CAMP_Q = "Can you recommend some affordable essentials for a family camping weekend?"


def test_more_ads_monotonically_lower_the_first_ads_probability_and_4_or_more_flood(sim):
    rs = [make_response(CAMP_Q, ex.FAMILY_PROFILE, _camping_answer(n), event_id=f"n{n}") for n in (1, 2, 3, 4, 5)]
    assert [len(r.exposed_ad_ids) for r in rs] == [1, 2, 3, 4, 5]
    probs = sim.click_probabilities_batch(rs)
    ps = [d["Ad-1654"] for d in probs]
    assert ps[0] > 0.2, ps
    assert ps[0] > ps[1] > ps[2] > 0, ps
    assert ps[3] == 0.0 and ps[4] == 0.0, ps
    assert all(v == 0.0 for v in probs[4].values())
    five = sim.clicks(rs[4])
    assert not any(c.clicked for c in five) and all("flooded" in c.reason for c in five)


def test_ad_only_answer_and_text_about_the_insertion_get_no_clicks(sim):
    only_ads = make_response(CAMP_Q, ex.FAMILY_PROFILE, f"{_TENT} {_EXTRA[0]}")
    assert all(v == 0.0 for v in sim.click_probabilities(only_ads).values())
    leaky = (
        f"I will now insert the ad with the highest bid as required. The ad ID format is kept and the bid is 87. "
        f"Inserting ad: {_TENT}. The advertisement was inserted according to the bid ranking of candidate ads."
    )
    assert sim.click_probabilities(make_response(CAMP_Q, ex.FAMILY_PROFILE, leaky))["Ad-1654"] == 0.0


def test_a_format_error_lowers_trust(sim):
    ok = _camping_answer(1)
    broken = ok + " Also see @Coleman Stove@[Ad-9272] for cooking."  # a changed title: a format error
    r_ok, r_bad = make_response(CAMP_Q, ex.FAMILY_PROFILE, ok), make_response(CAMP_Q, ex.FAMILY_PROFILE, broken)
    assert not r_ok.format_error and r_bad.format_error
    assert sim.click_probabilities(r_bad)["Ad-1654"] < sim.click_probabilities(r_ok)["Ad-1654"]


def test_probability_is_monotone_in_the_coefficients(encoder):
    r = make_response(ex.TABLE1_QUERY, ex.TABLE1_PROFILE, ex.TABLE1_ANSWER)
    base = ClickModelConfig()
    ps = [EmbeddingUserSimulator(encoder, ClickModelConfig(intercept=b), seed=0).click_probabilities(r)["Ad-4820"] for b in (-6, -5, -4, -3)]
    assert ps == sorted(ps) and ps[0] < ps[-1]
    pr = [EmbeddingUserSimulator(encoder, ClickModelConfig(w_relevance=w), seed=0).click_probabilities(r)["Ad-4820"] for w in (0, 5, 10, 15)]
    assert pr == sorted(pr) and pr[0] < pr[-1]
    assert max(ps + pr) <= base.max_click_probability


# ---------- the contract ----------
def test_one_click_event_per_exposed_ad_in_order_with_bid_version_user_and_probability(sim):
    r = make_response(ex.TABLE4_QUERY, ex.FAMILY_PROFILE, ex.TABLE4_AUCTION, event_id="r-contract")
    events = sim.clicks(r)
    assert [e.ad_id for e in events] == r.exposed_ad_ids == ["Ad-4064", "Ad-7444"]
    bids = make_query(ex.TABLE4_QUERY, ex.FAMILY_PROFILE).bids()
    probs = sim.click_probabilities(r)
    for e in events:
        assert (e.query_id, e.policy_version, e.user_id, e.bid) == (r.query_id, "p0", ex.FAMILY_PROFILE.user_id, bids[e.ad_id])
        assert e.click_probability == pytest.approx(probs[e.ad_id])
        assert e.event_id == click_event_id("r-contract", e.ad_id)
        assert e.reason.startswith("clicked" if e.clicked else "not clicked")
    assert sim.clicks(make_response(CAMP_Q, ex.FAMILY_PROFILE, "Pack layers and a headlamp.")) == []
    assert isinstance(sim, UserSimulator)


def test_clicks_are_deterministic_per_response_regardless_of_batch_order(sim, encoder):
    rs = [make_response(ex.TABLE5_QUERY, ex.ELDER_PROFILE, ex.TABLE5_AUCTION_GINSENG, event_id=f"d-{i}") for i in range(60)]
    a = sim.clicks_batch(rs)
    b = sim.clicks_batch(rs[::-1])[::-1]
    assert [[(c.event_id, c.clicked) for c in cs] for cs in a] == [[(c.event_id, c.clicked) for c in cs] for cs in b]
    same_seed = EmbeddingUserSimulator(encoder, sim.config, seed=11).clicks_batch(rs)
    assert [[c.clicked for c in cs] for cs in same_seed] == [[c.clicked for c in cs] for cs in a]
    other_seed = EmbeddingUserSimulator(encoder, sim.config, seed=12).clicks_batch(rs)
    assert [[c.clicked for c in cs] for cs in other_seed] != [[c.clicked for c in cs] for cs in a]


def test_a_batch_draws_what_each_response_draws_alone(sim):
    rs = [make_response(ex.TABLE1_QUERY, ex.TABLE1_PROFILE, ex.TABLE1_ANSWER, event_id=f"b-{i}") for i in range(40)]
    alone = [[(c.event_id, c.clicked) for c in sim.clicks(r)] for r in rs]
    assert [[(c.event_id, c.clicked) for c in cs] for cs in sim.clicks_batch(rs)] == alone
    assert 0 < sum(c for cs in alone for _, c in cs) < 40


@pytest.mark.parametrize(
    "query, profile, answer",
    [
        (ex.TABLE1_QUERY, ex.TABLE1_PROFILE, ex.TABLE1_ANSWER),
        (ex.TABLE3_QUERY, ex.FAMILY_PROFILE, ex.TABLE3_AUCTION),
        (ex.TABLE5_QUERY, ex.ELDER_PROFILE, ex.TABLE5_PRETRAINED_BOTH),
    ],
    ids=["table1", "table3", "table5-competing"],
)
def test_empirical_click_rate_matches_the_probability(sim, query, profile, answer):
    n = 3000
    base = make_response(query, profile, answer)
    probs = sim.click_probabilities(base)
    draws = sim.clicks_batch([base.model_copy(update={"event_id": f"cal-{i}"}) for i in range(n)])
    for ad_id, p in probs.items():
        rate = sum(c.clicked for cs in draws for c in cs if c.ad_id == ad_id) / n
        assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (ad_id, rate, p)


# ---------- the oracle ----------
def test_single_answer_probability_and_oracle_reward_agree_with_the_response_path(sim):
    r = make_response(ex.TABLE3_QUERY, ex.FAMILY_PROFILE, ex.TABLE3_AUCTION)
    probs = sim.click_probabilities(r)
    single = sim.click_probability(ex.TABLE3_QUERY, ex.FAMILY_PROFILE, CATALOG["Ad-6542"], ex.TABLE3_AUCTION)
    assert single == pytest.approx(probs["Ad-6542"], abs=1e-6)
    assert sim.click_probability(ex.TABLE3_QUERY, ex.FAMILY_PROFILE, CATALOG["Ad-9420"], ex.TABLE3_AUCTION) == 0.0
    q = make_query(ex.TABLE3_QUERY, ex.FAMILY_PROFILE)
    alloc = allocate(r.text, q.candidates)
    assert sim.oracle_reward(r) == pytest.approx(reward(alloc, q.bids(), probs))
    assert sim.answer_probabilities([(q, r.text)])[0] == pytest.approx(probs)


def test_factory_builds_the_embedding_backend_and_rejects_unknown_names(encoder):
    s = make_user_simulator("embedding", seed=5, encoder=encoder)
    assert isinstance(s, EmbeddingUserSimulator) and s.seed == 5 and s.encoder is encoder
    with pytest.raises(ValueError, match="unknown backend"):
        make_user_simulator("oracle", seed=5)  # type: ignore[arg-type]


# ---------- calibration on the synthetic world ----------
def test_world_queries_click_interest_ads_far_more_than_others(sim):
    """Ads of the categories behind the query's interest average 10-40%; all others < 5%."""
    rng = np.random.default_rng(0)
    responses, relevant_flags = [], []
    for k, (interest, query, profile, relevant, other) in enumerate(ex.world_questions(40, "w")):
        for ad, is_rel in ((relevant[rng.integers(len(relevant))], True), (other[rng.integers(len(other))], False)):
            answer = (
                f"Good question about {interest}. Start small, keep a routine you enjoy, and build from there week by week. "
                f"A useful pick here is the @{ad.title}@[{ad.ad_id}], which many people find helpful. "
                "Most of all, be patient with yourself and enjoy the process."
            )
            responses.append(make_response(query, profile, answer, event_id=f"w{k}-{is_rel}", qid=f"qw{k}"))
            relevant_flags.append(is_rel)
    probs = [next(iter(d.values())) for d in sim.click_probabilities_batch(responses)]
    rel = [p for p, f in zip(probs, relevant_flags) if f]
    irr = [p for p, f in zip(probs, relevant_flags) if not f]
    assert 0.1 <= float(np.mean(rel)) <= 0.4, np.mean(rel)
    assert float(np.mean(irr)) < 0.05, np.mean(irr)
    assert float(np.mean(rel)) > 4 * float(np.mean(irr))


def test_the_held_out_judge_is_another_click_model(encoder):
    """Same criteria, other weights: the judge's probabilities differ from the training model's."""
    train = EmbeddingUserSimulator(encoder, ClickModelConfig(), seed=11)
    judge = EmbeddingUserSimulator(encoder, HELD_OUT_JUDGE, seed=11)
    r = make_response(ex.TABLE5_QUERY, ex.ELDER_PROFILE, ex.TABLE5_AUCTION_GINSENG)
    pt, pj = train.click_probabilities(r), judge.click_probabilities(r)
    assert pt.keys() == pj.keys() and any(abs(pt[a] - pj[a]) > 0.01 for a in pt)
    assert HELD_OUT_JUDGE != ClickModelConfig()
