"""The marker parser and allocation, on the paper's own answers (Tables 1, 3, 4, 5) and on broken ones."""

import pytest

from llm_auction.auction import allocate, parse_ads, validate
from llm_auction.schemas.catalog import load_catalog
from llm_auction.schemas.events import CandidateAd

CATALOG = {a.ad_id: a.title for a in load_catalog()}

TABLE1 = (
    "This coffee is not only delicious but also adds warmth and comfort to your post-yoga moments. "
    "The [@Dutch-imported Oriental Floral Coffee Cup@ \\[Ad-4820\\]](#) is the perfect companion for this coffee."
)
TABLE3_PRETRAINED = "moderation is key. [@Parsmenn Minimalist Cloud Sofa@\\[Ad-9420\\]](#) Though unrelated to food, ..."
TABLE3_AUCTION = "moderation is key. [@Staid Vitamin B12@\\[Ad-6542\\]](#)\u2014Vitamin B12 helps improve ..."
TABLE4_PRETRAINED = "bring essentials.\n\n@FILA Kids Basketball Shoes@[Ad-7633] are a practical choice for family outings."
TABLE4_AUCTION = (
    "learn about nature together. @Fila Kids' Sports Shoes@[Ad-4064]\u2014For outdoor activities, slip-resistant...\n"
    "2. Sheshan National Forest Park. @Sanag Clip-on Bluetooth Earphones@[Ad-7444]\u2014During outdoor camping..."
)
TABLE5_BOTH = (
    "1. Progesterone Tea: ... as a daily beverage. [@Progesterone Tea@\\[Ad-2489\\]](#).\n"
    "2. American Ginseng, Astragalus, and Goji Berry Tea: ... [@American Ginseng Tea@\\[Ad-3356\\]](#)."
)


@pytest.mark.parametrize(
    "text, expected",
    [
        (TABLE1, ["Ad-4820"]),
        (TABLE3_PRETRAINED, ["Ad-9420"]),
        (TABLE3_AUCTION, ["Ad-6542"]),
        (TABLE4_PRETRAINED, ["Ad-7633"]),
        (TABLE4_AUCTION, ["Ad-4064", "Ad-7444"]),
        (TABLE5_BOTH, ["Ad-2489", "Ad-3356"]),
    ],
)
def test_paper_examples_are_exposures_without_format_error(text, expected):
    alloc = allocate(text, CATALOG)
    assert list(alloc.exposed) == expected
    assert alloc.n_ads == len(expected)
    assert alloc.format_error is False
    assert alloc.reasons == ()


def test_positions_and_titles_are_reported():
    text = "Try @Staid Vitamin B12@[Ad-6542] daily."
    (m,) = parse_ads(text)
    assert (m.title, m.ad_id, m.well_formed) == ("Staid Vitamin B12", "Ad-6542", True)
    assert text[m.start : m.end] == "@Staid Vitamin B12@[Ad-6542]"


def test_markdown_link_span_covers_the_whole_link():
    text = "See [@Progesterone Tea@[Ad-2489]](#) now"
    (m,) = parse_ads(text)
    assert text[m.start : m.end] == "[@Progesterone Tea@[Ad-2489]](#)"


def test_no_marker_means_no_ads_and_no_error():
    alloc = allocate("A plain answer about soups, email me at a@b.com or c@d.org.", CATALOG)
    assert alloc.exposed == () and alloc.format_error is False


def test_duplicate_marker_counts_once():
    text = "@Staid Vitamin B12@[Ad-6542] is good. Again: @Staid Vitamin B12@[Ad-6542]."
    alloc = allocate(text, CATALOG)
    assert alloc.exposed == ("Ad-6542",) and alloc.n_ads == 1 and not alloc.format_error
    assert len(parse_ads(text)) == 2


def test_unknown_id_is_format_error_and_not_exposed():
    alloc = allocate("Buy @Staid Vitamin B12@[Ad-0001] now", CATALOG)
    assert alloc.exposed == () and alloc.format_error
    assert "unknown ad id Ad-0001" in alloc.reasons[0]


def test_id_not_among_this_querys_candidates_is_unknown():
    only_one = {"Ad-4820": CATALOG["Ad-4820"]}
    alloc = allocate("@Staid Vitamin B12@[Ad-6542]", only_one)
    assert alloc.exposed == () and alloc.format_error


@pytest.mark.parametrize(
    "title",
    ["Staid Vitamin B-12", "staid vitamin b12", "Staid Vitamin B12 Capsules", "Vitamin B12"],
)
def test_changed_title_is_format_error_and_not_exposed(title):
    alloc = allocate(f"Try @{title}@[Ad-6542] today", CATALOG)
    assert alloc.exposed == () and alloc.format_error
    assert "title of Ad-6542 changed" in alloc.reasons[0]


def test_wrong_title_for_a_real_id_is_error_while_the_good_one_still_counts():
    # SmolLM2's typical mistake: a real title with another ad's id.
    text = "@Progesterone Tea@[Ad-2489] and @Progesterone Tea@[Ad-3356]"
    alloc = allocate(text, CATALOG)
    assert alloc.exposed == ("Ad-2489",) and alloc.format_error and len(alloc.reasons) == 1


@pytest.mark.parametrize(
    "text",
    [
        "Try @Staid Vitamin B12@Ad-6542 today",  # no brackets
        "Try @Staid Vitamin B12[Ad-6542] today",  # missing second @
        "Try Staid Vitamin B12 [Ad-6542] today",  # no @ at all
        "Try @Staid Vitamin B12@[Ad-6542 today",  # unclosed bracket
        "Try @Staid Vitamin B12@[6542] today",  # id without prefix
        "Try @Staid Vitamin B12@(Ad-6542) today",  # wrong brackets
        "Our partner Ad-6542 sells vitamins",  # bare id
    ],
)
def test_malformed_markers_are_format_errors(text):
    mentions = parse_ads(text)
    assert mentions and not any(m.well_formed for m in mentions)
    alloc = validate(mentions, CATALOG)
    assert alloc.exposed == () and alloc.format_error
    assert alloc.reasons[0].startswith("malformed marker")


def test_broken_marker_with_id_is_one_mention_not_two():
    mentions = parse_ads("x @Staid Vitamin B12@[Ad-65x] y")
    assert len(mentions) == 1 and not mentions[0].well_formed


def test_mixed_good_and_malformed_keeps_the_good_exposure():
    text = "[@Staid Vitamin B12@\\[Ad-6542\\]](#) and also Ad-4820 cups"
    alloc = allocate(text, CATALOG)
    assert alloc.exposed == ("Ad-6542",) and alloc.format_error and alloc.n_ads == 1


def _cands(*pairs):
    return [CandidateAd(ad_id=i, title=t, category="c", bid=10) for i, t in pairs]


@pytest.mark.parametrize("form", [list, tuple, iter, lambda cs: {c.ad_id: c.title for c in cs}])
def test_candidates_as_objects_iterables_or_mapping_give_the_same_allocation(form):
    # Five well-formed markers: more than the ids looked up by scanning before the lookup builds
    # its dict, so both paths count. One changed title, one id that is not a candidate, one repeat.
    cands = _cands(("Ad-0001", "Green Tea"), ("Ad-0002", "Mug"), ("Ad-0003", "Pan"), ("Ad-0004", "Knife"))
    text = "@Mug@[Ad-0002], @Green Teas@[Ad-0001], @Pan@[Ad-0009], @Knife@[Ad-0004], again @Mug@[Ad-0002]. Ad-0003"
    alloc = allocate(text, form(cands))
    assert alloc.exposed == ("Ad-0002", "Ad-0004")
    assert alloc.reasons == (
        "title of Ad-0001 changed at 16: 'Green Teas' != 'Green Tea'",
        "unknown ad id Ad-0009 at 39",
        "malformed marker at 95: 'Ad-0003'",
    )


@pytest.mark.parametrize("n_before", [0, 3])  # the id found by scanning, or in the dict built after
def test_duplicate_candidate_id_takes_the_last_title(n_before):
    cands = _cands(("Ad-0001", "Old Title"), ("Ad-0002", "Mug"), ("Ad-0001", "New Title"))
    before = "@Mug@[Ad-0002] " * n_before
    assert allocate(before + "@New Title@[Ad-0001]", cands).exposed == (("Ad-0002",) if n_before else ()) + ("Ad-0001",)
    assert allocate(before + "@Old Title@[Ad-0001]", cands).reasons == (f"title of Ad-0001 changed at {15 * n_before}: 'Old Title' != 'New Title'",)


def test_stray_and_broken_markers_after_good_ones_keep_their_positions():
    # The well-formed markers are blanked out before the search for stray ids and broken markers:
    # the positions and raw text of what is found afterwards must still be those of ``text``.
    text = "[@Mug@[Ad-0002]](#) and Ad-0007, then @Pan@[Ad-0003 and @Pan@[Ad-0003]."
    got = [(m.ad_id, m.start, m.end, m.raw, m.well_formed) for m in parse_ads(text)]
    assert got == [
        ("Ad-0002", 0, 19, "[@Mug@[Ad-0002]](#)", True),
        ("Ad-0007", 24, 31, "Ad-0007", False),
        ("Ad-0003", 38, 51, "@Pan@[Ad-0003", False),  # unclosed: the broken marker swallows its id
        ("Ad-0003", 56, 70, "@Pan@[Ad-0003]", True),
    ]
