"""The User-LLM backend on a real local causal LM (the bundled SmolLM2-135M-Instruct GGUF). Slow.

What must hold whatever the small model writes: one event per exposed ad, every reply either
parsed or counted as unparseable (never an exception), and the same seed giving the same replies.
"""

import pytest

from llm_auction.auction import allocate
from llm_auction.models.user_sim import examples as ex
from llm_auction.models.user_sim.llm import LLMUserSimulator, TransformersGenerator, build_click_prompt, default_user_llm
from llm_auction.schemas import CandidateAd, QueryEvent, ResponseEvent
from llm_auction.schemas.catalog import load_catalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generator():
    try:
        folder, gguf = default_user_llm()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return TransformersGenerator(folder, gguf_file=gguf, max_new_tokens=64, seed=5, batch_size=2)


def response(answer, query, profile, eid):
    cands = [CandidateAd(**a.model_dump(), bid=50) for a in load_catalog()]
    q = QueryEvent(query_id=f"q-{eid}", user=profile, query=query, candidates=cands)
    alloc = allocate(answer, q.candidates)
    return ResponseEvent.for_query(event_id=eid, query_id=q.query_id, policy_version="base", query=q, text=answer,
                         exposed_ad_ids=list(alloc.exposed), n_ads=alloc.n_ads, format_error=alloc.format_error)


def test_real_model_replies_become_one_event_per_exposed_ad(generator):
    sim = LLMUserSimulator(generate_fn=generator, seed=5)
    rs = [
        response(ex.TABLE1_ANSWER, ex.TABLE1_QUERY, ex.TABLE1_PROFILE, "t1"),
        response(ex.TABLE5_PRETRAINED_BOTH, ex.TABLE5_QUERY, ex.ELDER_PROFILE, "t5"),
        response("Brew it with oat milk.", ex.TABLE1_QUERY, ex.TABLE1_PROFILE, "none"),
    ]
    out = sim.clicks_batch(rs)
    assert [[c.ad_id for c in cs] for cs in out] == [["Ad-4820"], ["Ad-2489", "Ad-3356"], []]
    assert sim.n_replies == 2 and 0 <= sim.n_unparseable <= 2
    assert all(c.click_probability is None and c.policy_version == "base" for cs in out for c in cs)


def test_same_seed_same_replies(generator):
    prompts = [build_click_prompt(ex.TABLE1_QUERY, ex.TABLE1_PROFILE, ex.TABLE1_ANSWER)]
    generator.max_new_tokens, saved = 16, generator.max_new_tokens  # determinism needs few tokens
    try:
        generator.calls = 0
        first = generator(prompts)
        generator.calls = 0
        assert generator(prompts) == first and first[0].strip()
    finally:
        generator.max_new_tokens = saved
