"""The responses x clicks join: either order, late clicks, unexposed clicks, redelivery."""

from llm_auction.schemas import CandidateAd, ClickEvent, QueryEvent, ResponseEvent, UserProfile
from llm_auction.stream_app.join import ImpressionJoiner

CANDS = [
    CandidateAd(ad_id="Ad-2489", title="Progesterone Tea", category="herbal tea", bid=100),
    CandidateAd(ad_id="Ad-3356", title="American Ginseng Tea", category="herbal tea", bid=41),
    CandidateAd(ad_id="Ad-6542", title="Staid Vitamin B12", category="supplements", bid=7),
]


def resp(qid="q1", exposed=("Ad-2489", "Ad-3356")):
    q = QueryEvent(query_id=qid, user=UserProfile(user_id="u9", info="x", interests=["tea"]), query="tea?", candidates=CANDS)
    return ResponseEvent.for_query(query_id=qid, policy_version="v1", query=q, text="answer", exposed_ad_ids=list(exposed), n_ads=len(exposed))


def click(ad, clicked, qid="q1"):
    return ClickEvent(query_id=qid, ad_id=ad, clicked=clicked, policy_version="v1", user_id="u9", bid=1)


def joiner():
    return ImpressionJoiner({}, {}, max_wait_s=10)


def test_response_then_clicks_completes_with_bids_from_the_query():
    j = joiner()
    assert j.add_response(resp(), now=0) == []
    assert j.add_click(click("Ad-2489", True), now=1) == []
    rows = j.add_click(click("Ad-3356", False), now=2)
    assert [(r.ad_id, r.bid, r.clicked, r.user_id, r.policy_version) for r in rows] == [
        ("Ad-2489", 100, True, "u9", "v1"),
        ("Ad-3356", 41, False, "u9", "v1"),
    ]
    assert j.pending == {} and j.early_clicks == {}


def test_clicks_before_response_are_kept_and_unexposed_ones_dropped():
    j = joiner()
    j.add_click(click("Ad-3356", True), now=0)
    j.add_click(click("Ad-6542", True), now=0)  # not exposed: no impression, not billable
    j.add_click(click("Ad-2489", False), now=0)
    rows = j.add_response(resp(), now=1)
    assert {(r.ad_id, r.clicked) for r in rows} == {("Ad-2489", False), ("Ad-3356", True)}
    assert j.pending == {} and j.early_clicks == {}


def test_missing_decisions_become_unclicked_after_the_wait():
    j = joiner()
    j.add_response(resp(), now=0)
    j.add_click(click("Ad-3356", True), now=1)
    assert j.expire(now=5) == []
    rows = j.expire(now=10)
    assert {(r.ad_id, r.clicked) for r in rows} == {("Ad-2489", False), ("Ad-3356", True)}
    assert j.pending == {}


def test_redelivered_response_and_duplicate_clicks_do_not_double_count():
    j = joiner()
    r = resp()
    j.add_response(r, now=0)
    assert j.add_response(r, now=0.5) == []
    j.add_click(click("Ad-2489", True), now=1)
    j.add_click(click("Ad-2489", True), now=1)
    rows = j.add_click(click("Ad-3356", False), now=2)
    assert len(rows) == 2


def test_answer_without_ads_yields_nothing_and_keeps_no_state():
    j = joiner()
    assert j.add_response(resp(exposed=()), now=0) == [] and j.pending == {}


def test_true_click_probability_travels_to_the_impression_in_either_order():
    j = joiner()
    c1 = click("Ad-2489", True).model_copy(update={"click_probability": 0.25})
    j.add_click(c1, now=0)  # early
    j.add_response(resp(), now=1)
    rows = j.add_click(click("Ad-3356", False).model_copy(update={"click_probability": 0.125}), now=2)
    assert {(r.ad_id, r.click_probability) for r in rows} == {("Ad-2489", 0.25), ("Ad-3356", 0.125)}
    j.add_response(resp("q2"), now=3)
    rows = j.expire(now=100)  # no decisions: not clicked, truth unknown
    assert {(r.ad_id, r.clicked, r.click_probability) for r in rows} == {("Ad-2489", False, None), ("Ad-3356", False, None)}


def test_early_clicks_that_never_meet_a_response_are_dropped_after_their_ttl():
    j = ImpressionJoiner({}, {}, max_wait_s=10, early_ttl_s=50)
    j.add_click(click("Ad-2489", True, qid="orphan"), now=0)
    assert j.expire(now=49) == [] and "orphan" in j.early_clicks
    assert j.expire(now=50) == [] and j.early_clicks == {}
