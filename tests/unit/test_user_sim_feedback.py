"""Parsing the User-LLM's click feedback: the paper's Table 1 reply, and the ways small models break it."""

import pytest

from llm_auction.models.user_sim.examples import TABLE1_FEEDBACK
from llm_auction.models.user_sim.feedback import extract_json_list, parse_click_feedback

T1_REASON = (
    "The ad is relevant to the query; the recommended coffee cup suits the oat milk latte and aligns naturally "
    "with the post-yoga relaxation context."
)


def parse(text, exposed=("Ad-4820",)):
    notes: list[str] = []
    decisions, problem = parse_click_feedback(text, list(exposed), notes)
    return decisions, problem, notes


def test_paper_table1_feedback_parses_cleanly():
    d, problem, notes = parse(TABLE1_FEEDBACK)
    assert problem is None and notes == []
    assert d == {"Ad-4820": (True, T1_REASON)}


@pytest.mark.parametrize(
    "wrapped, repair",
    [
        (f"```json\n{TABLE1_FEEDBACK}\n```", "code fence"),
        (f"Sure! As this user, my feedback is:\n{TABLE1_FEEDBACK}\nThanks for asking.", "text around the list"),
        (f"<think>The cup fits [maybe].</think>{TABLE1_FEEDBACK}", None),
        (TABLE1_FEEDBACK.replace('."}]', '.",},]'), "trailing comma"),
        ("[{'ad_id': 'Ad-4820', 'clicked': True, 'reason': 'fits the \"latte\" moment'}]", "single quotes or Python literals"),
        ('{"ad_id": "Ad-4820", "clicked": true, "reason": "fits"}', "single object, no list"),
        ('I noticed @Cup@[Ad-4820] in the answer. [{"ad_id": "Ad-4820", "clicked": true}]', "text around the list"),
    ],
    ids=["fence", "prose", "think", "trailing-comma", "single-quotes", "bare-object", "marker-before-list"],
)
def test_repairable_replies_keep_the_decision(wrapped, repair):
    d, problem, notes = parse(wrapped)
    assert problem is None
    assert d["Ad-4820"][0] is True
    if repair:
        assert f"repaired: {repair}" in notes, notes


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I would probably click the coffee cup.",
        '[{"ad_id": "Ad-4820", "clicked": tru',  # cut off mid-generation
        '[{"foo": 1}, {"bar": 2}]',  # no usable item
        '["Ad-4820"]',  # a list, but not of decisions
        '[{"ad_id": "Ad-4820", "clicked": "maybe"}]',  # not a boolean
    ],
    ids=["empty", "prose-only", "truncated", "no-usable-item", "list-of-ids", "non-boolean"],
)
def test_unparseable_replies_are_rejected_without_an_exception_and_click_nothing(reply):
    d, problem, _ = parse(reply, ("Ad-4820", "Ad-2944"))
    assert problem
    assert d == {"Ad-4820": (False, "unparseable feedback"), "Ad-2944": (False, "unparseable feedback")}


def test_ids_not_exposed_are_ignored_and_missing_ones_are_not_clicked():
    reply = '[{"ad_id": "Ad-9999", "clicked": true, "reason": "x"}, {"ad_id": "Ad-2944", "clicked": true, "reason": "y"}]'
    d, problem, notes = parse(reply, ("Ad-4820", "Ad-2944"))
    assert problem is None
    assert list(d) == ["Ad-4820", "Ad-2944"]  # exposure order
    assert d["Ad-2944"] == (True, "y") and d["Ad-4820"] == (False, "no feedback for this ad")
    assert "ignored id not exposed: Ad-9999" in notes and "missing id counted as not clicked: Ad-4820" in notes


def test_duplicates_keep_the_first_and_string_booleans_are_read():
    reply = '[{"ad_id": "Ad-4820", "clicked": "false", "reason": "a"}, {"ad_id": "Ad-4820", "clicked": true, "reason": "b"}]'
    d, problem, notes = parse(reply)
    assert problem is None and d == {"Ad-4820": (False, "a")}
    assert "duplicate id, first kept: Ad-4820" in notes


def test_empty_list_is_a_valid_no_click_reply_and_no_exposure_needs_nothing():
    d, problem, _ = parse("[]")
    assert problem is None and d == {"Ad-4820": (False, "no feedback for this ad")}
    assert parse_click_feedback("[]", []) == ({}, None)


def test_the_first_list_of_decisions_wins_over_later_ones_and_bracketed_prose():
    reply = 'See [the answer] above. [{"ad_id": "Ad-4820", "clicked": false, "reason": "not now"}] or [{"ad_id": "Ad-4820", "clicked": true}]'
    d, problem, _ = parse(reply)
    assert problem is None and d["Ad-4820"] == (False, "not now")


def test_extract_does_not_touch_brackets_inside_strings():
    items, repairs = extract_json_list('[{"ad_id": "Ad-4820", "clicked": true, "reason": "a ] and [ inside"}]')
    assert items == [{"ad_id": "Ad-4820", "clicked": True, "reason": "a ] and [ inside"}] and repairs == []
