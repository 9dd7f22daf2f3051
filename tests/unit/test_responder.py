"""The responder handler: validation against the catalog, allocation, and derived identity."""

from collections import namedtuple

from llm_auction.auction import allocate
from llm_auction.consumers.responder import ResponderHandler
from llm_auction.consumers.routing import PolicyRouter
from llm_auction.consumers.service import Item
from llm_auction.models.stored_backend import StoredAnswerBackend
from llm_auction.schemas import CandidateAd, QueryEvent, UserProfile
from llm_auction.schemas.catalog import load_catalog

Rec = namedtuple("Rec", "topic partition offset key value")


def query(qid="q1", user="u1", **over):
    cands = over.pop("candidates", None) or [
        CandidateAd(ad_id="Ad-2489", title="Progesterone Tea", category="herbal tea", bid=100),
        CandidateAd(ad_id="Ad-3356", title="American Ginseng Tea", category="herbal tea", bid=41),
    ]
    return QueryEvent(query_id=qid, user=UserProfile(user_id=user, info="x", interests=["tea"]), query="tea?", candidates=cands, **over)


def backend(*versions):
    b = StoredAnswerBackend()
    for v in versions:
        b.load_policy(v, "unused")
    return b


def handle(events, version="v7", pick=None):
    h = ResponderHandler(backend(version), load_catalog(), PolicyRouter(version), pick)
    return h.handle([Item(Rec("auction.queries", 0, i, b"k", b""), e) for i, e in enumerate(events)])


def test_answer_is_allocated_and_tagged_with_the_policy():
    (o,) = handle([query()]).outputs
    r = o.event
    assert o.topic == "auction.responses" and o.key == "q1"
    assert r.policy_version == "v7" and r.exposed_ad_ids == ["Ad-2489"] and r.n_ads == 1 and not r.format_error
    assert r.shown_ad_ids == ["Ad-2489", "Ad-3356"] and r.query_id == "q1"
    assert r.query == query().query and r.user == query().user and r.bids() == {"Ad-2489": query().bids()["Ad-2489"]}


def test_redelivered_query_gets_the_same_identity_and_event_time():
    q = query()
    a, b = handle([q]).outputs[0].event, handle([q]).outputs[0].event
    assert a.event_id == b.event_id and a.ts == b.ts == q.ts
    other = handle([q], version="v8").outputs[0].event
    assert other.event_id != a.event_id  # another policy's answer is another event


def test_unknown_ad_or_changed_title_is_rejected_not_answered():
    bad_id = query("q2", candidates=[CandidateAd(ad_id="Ad-0000", title="Nope", category="x", bid=5)])
    bad_title = query("q3", candidates=[CandidateAd(ad_id="Ad-2489", title="Progesterone Tea XL", category="herbal tea", bid=5)])
    out = handle([bad_id, query("q4"), bad_title])
    assert [o.key for o in out.outputs] == ["q4"]
    reasons = {it.event.query_id: why for it, why in out.rejected}
    assert "unknown ad id Ad-0000" in reasons["q2"] and "differs from the catalog" in reasons["q3"]


def test_shown_candidates_narrow_what_the_model_sees_and_what_counts():
    pick = lambda q: [c for c in q.candidates if c.ad_id == "Ad-3356"]  # noqa: E731
    (o,) = handle([query()], pick=pick).outputs
    # the stored answer names the best *shown* ad, and only shown ads can be exposed
    assert o.event.exposed_ad_ids == ["Ad-3356"] and o.event.shown_ad_ids == ["Ad-3356"]
    assert [a.ad_id for a in o.event.exposed_ads] == ["Ad-3356"]


def test_catalog_candidates_are_trusted_only_against_the_package_catalog():
    q = query()
    assert q.candidates.catalog_only  # both are catalog ads as is: they travel and are held as columns
    retitled = [a.model_copy(update={"title": "Progesterone Tea (new label)"}) if a.ad_id == "Ad-2489" else a for a in load_catalog()]
    h = ResponderHandler(StoredAnswerBackend(), retitled, PolicyRouter("v1"))
    assert not h.trusts_package_catalog  # another catalog: every candidate is checked against it
    out = h.handle([Item(Rec("auction.queries", 0, 0, b"k", b""), q)])
    assert not out.outputs and "differs from the catalog" in out.rejected[0][1]
    assert ResponderHandler(StoredAnswerBackend(), load_catalog(), PolicyRouter("v1")).trusts_package_catalog


def test_allocation_reads_titles_from_the_candidate_columns():
    q = query()
    text = "Try @American Ginseng Tea@[Ad-3356], or @Green Tea@[Ad-0001], or @Progesterone Tea X@[Ad-2489]."
    alloc = allocate(text, q.candidates)
    assert alloc.exposed == ("Ad-3356",) and alloc.format_error
    assert any("unknown ad id Ad-0001" in r for r in alloc.reasons) and any("title of Ad-2489 changed" in r for r in alloc.reasons)
    assert allocate(text, list(q.candidates)) == alloc  # same answer from the models


def test_response_id_is_the_uuid5_of_query_id_and_policy_version():
    import uuid

    from llm_auction.consumers.responder import response_event_id

    ns = uuid.UUID("2b0c8a52-3f43-4a57-8f1e-8d3c5a9e6b20")  # fixed: changing it would change every response id
    for qid, version in [("q-1", "v1"), ("réponse ü", "base"), *((f"{i:032x}", "v9") for i in range(500))]:
        assert response_event_id(qid, version) == str(uuid.uuid5(ns, f"{qid}/{version}"))


def test_each_query_is_answered_by_the_version_its_user_is_routed_to():
    from llm_auction.consumers.routing import bucket

    router = PolicyRouter("v1", "v2", 0.5, salt="s")
    b = backend("v1", "v2")
    asked = []
    gen = b.generate
    b.generate = lambda qs, versions, n=1: asked.append(list(versions)) or gen(qs, versions, n)
    qs = [query(f"q{i}").model_copy(update={"user": UserProfile(user_id=f"u{i}", info="x", interests=["tea"])}) for i in range(40)]
    out = ResponderHandler(b, load_catalog(), router).handle([Item(Rec("auction.queries", 0, i, b"k", b""), q) for i, q in enumerate(qs)])
    want = ["v2" if bucket("s", f"u{i}") < 5000 else "v1" for i in range(40)]
    assert asked == [want] and [o.event.policy_version for o in out.outputs] == want and {"v1", "v2"} == set(want)
    assert len({o.event.event_id for o in out.outputs}) == 40


def _score(pctr):
    """A pCTR function giving each ad a fixed probability, whatever the answer."""
    return lambda items: [{ad: pctr[ad] for ad in ads} for _, _, ads in items]


def test_a_mechanism_arm_answers_with_its_prices_and_cost():
    from llm_auction.mechanisms import Arms

    b = backend("v7")
    # bid x pCTR: Ad-2489 100 x 0.1 = 10 beats Ad-3356 41 x 0.2 = 8.2; GSP: 41 x 0.2 / 0.1 = 82 per click
    arms = Arms(b, score=_score({"Ad-2489": 0.1, "Ad-3356": 0.2}), base_version="v7")
    h = ResponderHandler(b, load_catalog(), PolicyRouter("slot"), arms=arms)
    (o,) = h.handle([Item(Rec("auction.queries", 0, 0, b"k", b""), query())]).outputs
    r = o.event
    assert r.policy_version == "slot" and r.exposed_ad_ids == ["Ad-2489"]
    assert r.prices == [82.0] and r.price_map() == {"Ad-2489": 82.0}
    assert r.generations == 1 and r.generated_tokens == 0  # the stored backend has no tokenizer: 0 is "unknown"


def test_plain_and_mechanism_arms_share_a_batch_each_with_its_own_cost():
    from llm_auction.mechanisms import Arms

    b = backend("v7")
    arms = Arms(b, score=_score({"Ad-2489": 0.1, "Ad-3356": 0.2}), base_version="v7")
    router = PolicyRouter("v7", candidate="mosaic:3", share=0.5, salt="s")
    h = ResponderHandler(b, load_catalog(), router, arms=arms)
    users = [f"u{i}" for i in range(12)]
    qs = [query(f"q{i}", user=u) for i, u in enumerate(users)]
    out = {o.event.query_id: o.event for o in h.handle([Item(Rec("auction.queries", 0, i, b"k", b""), q) for i, q in enumerate(qs)]).outputs}
    want = {q.query_id: router.version_for(q.user.user_id) for q in qs}
    assert {r.policy_version for r in out.values()} == {"v7", "mosaic:3"}  # the salt splits these twelve users
    for qid, r in out.items():
        assert r.policy_version == want[qid]
        assert r.generations == (3 if want[qid] == "mosaic:3" else 1)
        assert r.prices == []  # first price travels as no prices


def test_a_rollout_to_a_mechanism_without_a_served_pctr_is_refused():
    from llm_auction.mechanisms import Arms

    arms = Arms(backend("v7"), base_version="v7")
    assert "needs a pCTR function" in arms.problem("mosaic:20") and arms.problem("pretrained") is None and arms.problem("v9") is None
