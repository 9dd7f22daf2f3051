"""Mechanism logic (llm_auction/mechanisms): which answer each picks, what it charges, what it counts.

A scripted backend stands in for the model (the answers are the test's input); the allocation,
Eq. 8 and the prices are the real code, recomputed here by hand.
"""

from __future__ import annotations

import pytest

from llm_auction.auction import allocate, reward
from llm_auction.mechanisms import BestOfN, Mechanism, PolicySample, SlotAuction, gsp_price, make_mechanism
from llm_auction.mechanisms.slot import pre_generation_ctr
from llm_auction.schemas import CandidateAd, QueryEvent, UserProfile
from llm_auction.schemas.catalog import load_catalog

ADS = load_catalog()[:4]


def _query(qid: str = "q1", bids=(10, 50, 90, 3)) -> QueryEvent:
    return QueryEvent(query_id=qid, user=UserProfile(user_id="u1", info="A reader.", interests=["coffee"]), query="Best coffee grinder?",
                      candidates=[CandidateAd(**a.model_dump(), bid=b) for a, b in zip(ADS, bids)])


def marker(i: int) -> str:
    return f"@{ADS[i].title}@[{ADS[i].ad_id}]"


class Scripted:
    """Returns the given answers per query, cycling; records what it was asked."""

    def __init__(self, answers: list[str]):
        self.answers, self.calls = answers, []

    def generate(self, queries, policy_version, n=1):
        self.calls.append((list(queries), policy_version, n))
        return [[self.answers[j % len(self.answers)] for j in range(n)] for _ in queries]


def words(text: str) -> int:
    return len(text.split())


PCTR = {ADS[0].ad_id: 0.5, ADS[1].ad_id: 0.1, ADS[2].ad_id: 0.3, ADS[3].ad_id: 0.9}


def score(items):
    return [{ad: PCTR[ad] for ad in ads} for _, _, ads in items]


def test_best_of_n_picks_the_argmax_of_eq8_first_on_ties():
    answers = [
        "No ad at all.",  # 0
        f"Try {marker(0)} today.",  # 10 x 0.5 - 10 = -5
        f"Take {marker(2)}.",  # 90 x 0.3 - 10 = 17
        f"Both {marker(2)} and {marker(1)}.",  # 27 + 5 - 40 = -8
        "Broken @Nope@[Ad-0000].",  # format error
        f"Again {marker(2)}.",  # 17: a tie with sample 2, which wins
    ]
    q = _query()
    m = BestOfN(Scripted(answers), "base", score, n=len(answers), count_tokens=words)
    (out,) = m.run([q])
    expected = [reward(allocate(t, q.candidates), q.bids(), {ad: PCTR[ad] for ad in allocate(t, q.candidates).exposed}) for t in answers]
    assert out.detail["rewards"] == pytest.approx(expected)
    assert out.detail["chosen"] == 2 == max(range(len(expected)), key=lambda i: (expected[i], -i))
    assert out.answer == answers[2] and out.allocation.exposed == (ADS[2].ad_id,) and out.prices == {ADS[2].ad_id: 90.0}
    assert (out.cost.generations, out.cost.generated_tokens) == (6, sum(words(t) for t in answers))
    assert isinstance(m, Mechanism) and m.name == "mosaic:6"


def test_best_of_n_softmax_is_seeded_and_a_small_temperature_is_the_argmax():
    answers = ["No ad.", f"Try {marker(0)} today.", f"Take {marker(2)}."]
    qs = [_query(f"q{i}") for i in range(30)]
    cold = BestOfN(Scripted(answers), "base", score, n=3, selection="softmax", temperature=1e-3, count_tokens=words).run(qs)
    assert {o.detail["chosen"] for o in cold} == {2}
    a = [o.detail["chosen"] for o in BestOfN(Scripted(answers), "base", score, n=3, selection="softmax", temperature=20, seed=4, count_tokens=words).run(qs)]
    b = [o.detail["chosen"] for o in BestOfN(Scripted(answers), "base", score, n=3, selection="softmax", temperature=20, seed=4, count_tokens=words).run(qs)]
    assert a == b and len(set(a)) > 1  # seeded, and warm enough to pick more than the best


def test_policy_sample_is_one_generation_at_first_price():
    text = f"Both {marker(1)} and {marker(3)} fit."
    backend = Scripted([text])
    (out,) = PolicySample(backend, "policy-0002", count_tokens=words).run([_query()])
    assert backend.calls[0][1:] == ("policy-0002", 1)
    assert out.prices == {ADS[1].ad_id: 50.0, ADS[3].ad_id: 3.0} and out.cost.generations == 1 and out.cost.generated_tokens == words(text)


def test_gsp_price_rule():
    assert gsp_price([("a", 40, 0.2), ("b", 50, 0.1), ("c", 10, 0.5)]) == pytest.approx(25.0)  # 50 x 0.1 / 0.2
    assert gsp_price([("a", 40, 0.2), ("b", 100, 0.079)]) == pytest.approx(39.5)
    assert gsp_price([("a", 40, 0.2), ("b", 10, 0.1)], reserve=30) == 30  # the reserve binds
    assert gsp_price([("a", 40, 0.2), ("b", 10, 0.1)], reserve=90) == 40  # never above the winner's bid
    assert gsp_price([("a", 40, 0.2)], reserve=2) == 2  # alone: the reserve


def test_slot_auction_sells_the_slot_before_generation_and_shows_it():
    q = _query(bids=(10, 50, 90, 3))  # bid x pCTR: 5, 5, 27, 2.7 -> ADS[2] wins; second 5 (ADS[0], first on the tie)
    backend = Scripted(["A grinder answer without any ad."])
    (out,) = SlotAuction(backend, "base", pre_generation_ctr(score), count_tokens=words).run([q])
    asked = backend.calls[0][0][0]
    assert [c.ad_id for c in asked.candidates] == [ADS[2].ad_id]  # the LLM sees only the winner
    assert out.detail["winner"] == ADS[2].ad_id and out.detail["appended"] is True
    assert out.answer.endswith(marker(2)) and out.allocation.exposed == (ADS[2].ad_id,) and not out.allocation.format_error
    assert out.prices == {ADS[2].ad_id: pytest.approx(10 * 0.5 / 0.3)}
    assert out.cost.generated_tokens == words("A grinder answer without any ad.")  # the appended line is not generated

    inserted = Scripted([f"Use {marker(2)} for it."])
    (kept,) = SlotAuction(inserted, "base", pre_generation_ctr(score), count_tokens=words).run([q])
    assert kept.answer == f"Use {marker(2)} for it." and kept.detail["appended"] is False


def test_make_mechanism_names():
    b = Scripted(["x"])
    assert make_mechanism("pretrained", backend=b, count_tokens=words).version == "base"
    assert make_mechanism("policy:policy-0003", backend=b, count_tokens=words).version == "policy-0003"
    assert make_mechanism("mosaic", backend=b, score=score, count_tokens=words).n == 20
    assert make_mechanism("mosaic:5", backend=b, score=score, count_tokens=words).name == "mosaic:5"
    assert make_mechanism("slot", backend=b, score=score, count_tokens=words).name == "slot"
    for bad in ("bogus", "mosaic:0", "mosaic:x", "policy", "pretrained:x"):
        with pytest.raises(ValueError):
            make_mechanism(bad, backend=b, score=score, count_tokens=words)
    with pytest.raises(ValueError, match="pCTR"):
        make_mechanism("mosaic", backend=b, count_tokens=words)
    with pytest.raises(TypeError, match="tokenizer"):
        make_mechanism("pretrained", backend=b)  # no tokenizer and no counter: no guessed token counts
