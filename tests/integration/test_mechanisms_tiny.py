"""Mechanisms over a real model: the tiny GPT-2 through the transformers backend, the simulator's
exact click probabilities as the pCTR, the real tokenizer counting what was generated.

Checks what a scripted backend cannot: the token counts are the tokenizer's, MOSAIC's choice is
the argmax of Eq. 8 recomputed from the simulator, and the slot auction's answer shows its
winner and nothing else.
"""

from __future__ import annotations

import pytest

from models_fixtures import tiny_model_dir  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration


def test_mechanisms_on_the_tiny_model(tiny_model_dir, small_world, text_encoder):  # noqa: F811
    from llm_auction.auction import allocate, reward
    from llm_auction.mechanisms import gsp_price, make_mechanism
    from llm_auction.models.adllm import SamplingConfig
    from llm_auction.models.backends import make_backend
    from llm_auction.models.retrieval import candidate_picker
    from llm_auction.models.user_sim import make_user_simulator
    from llm_auction.trainer import irpo
    from llm_auction.trainer.irpo_config import IRPOConfig
    from llm_auction.trainer.reward import oracle_pctr

    backend = make_backend("transformers", tiny_model_dir, sampling=SamplingConfig(max_new_tokens=32, seed=0), num_threads=1)
    score = oracle_pctr(make_user_simulator("embedding", seed=7, encoder=text_encoder))
    cfg = IRPOConfig(queries=4, split="test", candidates_k=8)
    queries = irpo.narrow(irpo.build_offline_set(small_world, cfg, 11), candidate_picker(8, text_encoder))
    tokens = lambda t: len(backend.tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731

    pre = make_mechanism("pretrained", backend=backend).run(queries)
    assert [o.cost.generations for o in pre] == [1] * 4
    assert [o.cost.generated_tokens for o in pre] == [tokens(o.answer) for o in pre]
    assert all(0 < o.cost.generated_tokens <= 33 for o in pre)  # a decoded answer may re-tokenize one longer

    mosaic = make_mechanism("mosaic:4", backend=backend, score=score).run(queries)
    for q, o in zip(queries, mosaic):
        assert o.cost.generations == 4 and len(o.detail["rewards"]) == 4
        a = allocate(o.answer, q.candidates)
        p = score([(q, o.answer, a.exposed)])[0]
        assert reward(a, q.bids(), {ad: p[ad] for ad in a.exposed}) == pytest.approx(max(o.detail["rewards"]))
        assert o.detail["rewards"][o.detail["chosen"]] == max(o.detail["rewards"])

    slot = make_mechanism("slot", backend=backend, score=score).run(queries)
    for q, o in zip(queries, slot):
        # the slot is shown whatever the model wrote (the tiny model also names ads it was not shown: format errors)
        assert o.detail["winner"] in o.allocation.exposed and set(o.prices) == set(o.allocation.exposed)
        ranking = o.detail["ranking"]
        scores = [b * p for _, b, p in ranking]
        assert ranking[0][0] == o.detail["winner"] and scores == sorted(scores, reverse=True) and len(ranking) == len(q.candidates)
        assert o.prices[o.detail["winner"]] == gsp_price(ranking) <= q.bids()[o.detail["winner"]]
    backend.close()
