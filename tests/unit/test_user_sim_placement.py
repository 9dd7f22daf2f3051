"""Marker placement (no model): which of the paper's insertions are in the flow, which are tacked on."""

import pytest

from llm_auction.models.user_sim import examples as ex
from llm_auction.models.user_sim.placement import analyze


@pytest.mark.parametrize(
    "text, ad_id, detached, trailing",
    [
        (ex.TABLE1_ANSWER, "Ad-4820", False, False),  # closes the answer's own last paragraph: in the flow
        (ex.TABLE3_PRETRAINED, "Ad-9420", False, False),
        (ex.TABLE3_AUCTION, "Ad-6542", False, False),
        (ex.TABLE4_PRETRAINED, "Ad-7633", False, True),  # an ad blurb below the conclusion
        (ex.TABLE4_AUCTION, "Ad-4064", False, False),
        (ex.TABLE4_AUCTION, "Ad-7444", False, False),
        (ex.TABLE5_AUCTION_GINSENG, "Ad-3356", False, False),
        (ex.TABLE5_PRETRAINED_BOTH, "Ad-2489", True, False),  # "... beverage. [@Progesterone Tea@...](#)."
        (ex.TABLE5_PRETRAINED_BOTH, "Ad-3356", True, False),
    ],
)
def test_paper_insertions(text, ad_id, detached, trailing):
    p = analyze(text, [ad_id]).placements[ad_id]
    assert p.found and (p.detached, p.trailing) == (detached, trailing)
    assert "Ad-" not in p.window and "@" not in p.window  # the marker itself is not context
    assert len(p.window.split()) >= 5


def test_window_stays_on_the_markers_line_and_borrows_the_previous_line_when_alone():
    text = "Line one talks about tea and autumn evenings.\n@Progesterone Tea@[Ad-2489]\nLine three is about shoes."
    p = analyze(text, ["Ad-2489"]).placements["Ad-2489"]
    assert "tea and autumn" in p.window and "shoes" not in p.window


def test_ad_load_measures():
    only_ads = analyze("@Progesterone Tea@[Ad-2489] @American Ginseng Tea@[Ad-3356]", ["Ad-2489", "Ad-3356"])
    assert only_ads.n_words == 0 and only_ads.ad_char_share > 0.9 and only_ads.n_mentions == 2
    leaky = analyze("I inserted the ad with the highest bid. Tea is warm. @Progesterone Tea@[Ad-2489] is nice.", ["Ad-2489"])
    assert 0.3 < leaky.leak_share < 0.7
    assert analyze(ex.TABLE1_ANSWER, ["Ad-4820"]).leak_share == 0.0
    missing = analyze("No marker here at all, just a plain answer about tea.", ["Ad-2489"]).placements["Ad-2489"]
    assert not missing.found


def test_leak_words_are_found_whatever_the_case_and_script():
    # ASCII text skips the leak regex when no leak stem is in it; text the regex matches never does
    for text in ["I INSERTED it.", "Our Sponsor: tea.", "The BIDS are in.", "Candidate AD shown.", "ad_id Ad-1 here."]:
        assert analyze(text + " Tea is warm and good for you on cold days.", []).leak_share > 0, text
    # case folding beyond ASCII: the long s and the dotless i match s and i in the leak regex
    for text in ["Inſerted here, like it or not.", "The bıd was high, like it or not."]:
        assert analyze(text, []).leak_share > 0, text
    assert analyze("Already read: a good head start, made for the road.", []).leak_share == 0.0


def test_overlapping_mentions_are_masked_once():
    from llm_auction.models.user_sim.placement import _mask

    text = "abcdefghijklmnop"
    spans = [(2, 6), (4, 9), (5, 7), (12, 14)]
    chars = list(text)
    for s, e in spans:
        chars[s:e] = " " * (e - s)
    assert _mask(text, spans) == "".join(chars) and _mask(text, []) == text
