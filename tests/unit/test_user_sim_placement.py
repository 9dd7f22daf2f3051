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
