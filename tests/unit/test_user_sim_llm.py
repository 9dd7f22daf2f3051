"""The User-LLM backend's plumbing around an injected generate_fn: prompt, parsing, fallback, counters.

The generator here is a scripted double (what is under test is everything around it); the real
causal LM runs in ``tests/integration/test_user_sim_llm.py`` (slow).
"""

import logging

import pytest

from llm_auction.auction import allocate
from llm_auction.models.user_sim import UserSimulator, click_event_id, make_user_simulator
from llm_auction.models.user_sim import examples as ex
from llm_auction.models.user_sim.llm import LLMUserSimulator, build_click_prompt
from llm_auction.schemas import CandidateAd, QueryEvent, ResponseEvent
from llm_auction.schemas.catalog import load_catalog


def response(answer: str, query=ex.TABLE1_QUERY, profile=ex.TABLE1_PROFILE, eid="r1") -> ResponseEvent:
    cands = [CandidateAd(**a.model_dump(), bid=10 + i % 90) for i, a in enumerate(load_catalog())]
    q = QueryEvent(query_id=f"q-{eid}", user=profile, query=query, candidates=cands)
    alloc = allocate(answer, q.candidates)
    return ResponseEvent.for_query(event_id=eid, query_id=q.query_id, policy_version="v3", query=q, text=answer,
                         exposed_ad_ids=list(alloc.exposed), n_ads=alloc.n_ads, format_error=alloc.format_error)


class Scripted:
    """A generate_fn that answers from a list and records the prompts it saw."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.prompts: list[str] = []

    def __call__(self, prompts):
        self.prompts.extend(prompts)
        out, self.replies = self.replies[: len(prompts)], self.replies[len(prompts) :]
        return out


def test_prompt_keeps_the_papers_structure_and_fills_every_slot():
    p = build_click_prompt(ex.TABLE1_QUERY, ex.TABLE1_PROFILE, ex.TABLE1_ANSWER)
    for part in ("Relevance", "Nativeness", "Competition", "@Ad Title@[Ad ID]", "strict JSON list", "empty list []",
                 ex.TABLE1_PROFILE.info, "yoga, coffee, LEGO building sets, reading", ex.TABLE1_QUERY, ex.TABLE1_ANSWER, ex.TABLE1_FEEDBACK):
        assert part in p, part
    assert p.index(ex.TABLE1_QUERY) < p.index(ex.TABLE1_ANSWER) and p.rstrip().endswith("Your click feedback:")


def test_clicks_follow_the_reply_and_events_honour_the_contract():
    gen = Scripted([ex.TABLE1_FEEDBACK])
    sim = LLMUserSimulator(generate_fn=gen, seed=1)
    r = response(ex.TABLE1_ANSWER)
    [e] = sim.clicks(r)
    assert (e.ad_id, e.clicked, e.bid, e.policy_version, e.user_id) == ("Ad-4820", True, r.bids()["Ad-4820"], "v3", "paper-t1")
    assert e.click_probability is None and "coffee cup" in e.reason and e.event_id == click_event_id("r1", "Ad-4820")
    assert len(gen.prompts) == 1 and ex.TABLE1_ANSWER in gen.prompts[0]
    assert (sim.n_replies, sim.n_unparseable, sim.n_clicks) == (1, 0, 1)
    assert isinstance(sim, UserSimulator)


def test_unparseable_reply_is_counted_logged_and_clicks_nothing(caplog):
    two_ads = ex.TABLE5_PRETRAINED_BOTH
    gen = Scripted(["I think I'd click the ginseng one!", '```json\n[{"ad_id": "Ad-3356", "clicked": true, "reason": "ok"},]\n```'])
    sim = LLMUserSimulator(generate_fn=gen)
    rs = [response(two_ads, ex.TABLE5_QUERY, ex.ELDER_PROFILE, eid="a"), response(two_ads, ex.TABLE5_QUERY, ex.ELDER_PROFILE, eid="b")]
    with caplog.at_level(logging.WARNING, logger="llm_auction.models.user_sim.llm"):
        bad, good = sim.clicks_batch(rs)
    assert [(c.ad_id, c.clicked) for c in bad] == [("Ad-2489", False), ("Ad-3356", False)]
    assert all(c.reason == "unparseable feedback" for c in bad)
    assert [(c.ad_id, c.clicked) for c in good] == [("Ad-2489", False), ("Ad-3356", True)]
    assert (sim.n_replies, sim.n_unparseable, sim.n_repaired) == (2, 1, 1)
    [rec] = [r for r in caplog.records if r.getMessage() == "user_sim.unparseable_reply"]
    assert rec.fields["response_id"] == "a"


def test_answers_without_ads_send_no_prompt_and_get_no_events():
    gen = Scripted([ex.TABLE1_FEEDBACK])
    sim = LLMUserSimulator(generate_fn=gen)
    out = sim.clicks_batch([response("Brew a latte with oat milk and relax.", eid="n"), response(ex.TABLE1_ANSWER, eid="y")])
    assert out[0] == [] and [c.ad_id for c in out[1]] == ["Ad-4820"]
    assert len(gen.prompts) == 1


def test_a_generator_returning_the_wrong_count_is_an_error_not_silent_loss():
    sim = LLMUserSimulator(generate_fn=lambda prompts: [])
    with pytest.raises(ValueError, match="0 replies for 1 prompts"):
        sim.clicks(response(ex.TABLE1_ANSWER))


def test_factory_and_constructor_guards():
    s = make_user_simulator("llm", seed=3, generate_fn=Scripted([]))
    assert isinstance(s, LLMUserSimulator) and s.seed == 3
    with pytest.raises(ValueError, match="need model_path"):
        LLMUserSimulator(generate_fn=Scripted([]), temperature=0.9)
