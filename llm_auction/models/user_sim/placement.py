"""Where each ad marker sits in an answer: the text-only half of the nativeness and flooding criteria.

The paper's User-LLM is told that a hard ad, one that breaks the answer's flow or is tacked on,
is not clicked, and that an answer flooded with ads or with text about the ad insertion itself
is not clicked at all. This module reads those facts off the marker positions that
``auction.parse_ads`` reports, with no model: what the embedding click model then scores.

- ``window``: the text around the marker within its line (markers removed), what the ad has to
  fit semantically; a marker alone on its line borrows the line before.
- ``detached``: the marker is a sentence of its own (``... beverage. [@Tea@[Ad-1]](#).``).
- ``trailing``: the marker is in the first sentence of a last paragraph that starts after the
  answer is essentially over: an ad blurb appended below the conclusion (paper Table 4,
  pre-trained). An ad closing the answer's own last paragraph (Tables 1 and 3) is not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from llm_auction.auction import AdMention, parse_ads

_WORD = re.compile(r"[A-Za-z0-9\u4e00-\u9fff]+")
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f](?=\s|$)")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?\n])\s+")
# Text about the insertion itself (instructions leaking into the answer), not about the product.
_LEAK = re.compile(
    r"\b(?:ads?|advert\w*|sponsor\w*|bids?|bidding|insert(?:ed|ing|ion)?|ad[ _-]?ids?|candidate ads?)\b", re.IGNORECASE
)
# Every _LEAK match contains one of these, case aside: on an ASCII text (where ignoring case is just
# lower()) their absence rules a leak out without running the regex, which must try every position.
# Non-ASCII text goes to the regex, whose case folding has non-ASCII equivalents (U+017F for s,
# U+0131 for i). Measurements: docs/benchmarks.md.
_LEAK_STEMS = ("ad", "bid", "sponsor", "insert")


def _may_leak(plain: str) -> bool:
    if not plain.isascii():
        return True
    low = plain.lower()
    return any(stem in low for stem in _LEAK_STEMS)


@dataclass(frozen=True)
class Placement:
    """One exposed ad's position in the answer."""

    ad_id: str
    window: str
    detached: bool
    trailing: bool
    found: bool
    position: float  # share of the answer's non-marker text that comes before the marker


@dataclass(frozen=True)
class Layout:
    """The whole answer as the user sees it."""

    placements: dict[str, Placement]
    n_words: int  # words outside ad markers
    ad_char_share: float  # share of characters inside ad markers
    leak_share: float  # share of non-marker text in sentences about the insertion itself
    n_mentions: int  # markers and marker attempts, well-formed or not


def _mask(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with every span blanked to spaces (same length, so positions still match)."""
    pieces: list[str] = []
    done = 0
    for s, e in sorted(spans):  # malformed mentions may overlap a marker: blank each character once
        if e > done:
            s = max(s, done)
            pieces += (text[done:s], " " * (e - s))
            done = e
    return "".join(pieces) + text[done:] if pieces else text


def _squash(s: str) -> str:
    return " ".join(s.split())


def _sentence_bounds(masked: str, ls: int, le: int, s: int, e: int) -> tuple[int, int]:
    start = ls
    for m in _SENTENCE_END.finditer(masked, ls, s):
        start = m.end()
    m = _SENTENCE_END.search(masked, e, le)
    return start, (m.end() if m else le)


def analyze(text: str, exposed_ids: Sequence[str], window_chars: int = 240, trailing_min_position: float = 0.75) -> Layout:
    """Placement of every exposed ad (first well-formed marker naming it) and the answer's ad load.

    This runs once per response in the user-simulator service, so it avoids work the common answer
    does not need: the squashed text is built once, a test that needs only "is there a word" searches
    in place instead of slicing and listing words, and the sentence split that measures leak text
    runs only when the answer has a leak word at all (a sentence holds a match only if the whole
    text does). Measurements: docs/benchmarks.md.
    """
    mentions = parse_ads(text)
    spans = [(m.start, m.end) for m in mentions]
    masked = _mask(text, spans)
    marker_chars = sum(e - s for s, e in spans)
    plain_text = _squash(masked)
    all_plain = max(1, len(plain_text))
    first: dict[str | None, AdMention] = {}  # each ad's first well-formed marker
    for x in mentions:
        if x.well_formed:
            first.setdefault(x.ad_id, x)

    placements: dict[str, Placement] = {}
    for ad_id in exposed_ids:
        m = first.get(ad_id)
        if m is None:
            placements[ad_id] = Placement(ad_id, plain_text[: 2 * window_chars], False, False, False, 0.5)
            continue
        ls = masked.rfind("\n", 0, m.start) + 1
        le = masked.find("\n", m.end)
        le = len(masked) if le < 0 else le
        window = _squash(masked[max(ls, m.start - window_chars) : m.start] + " " + masked[m.end : min(le, m.end + window_chars)])
        if ls > 0 and len(_WORD.findall(window)) < 5:
            prev_end = ls - 1
            prev_start = masked.rfind("\n", 0, max(0, prev_end - 1)) + 1
            while prev_start > 0 and not _WORD.search(masked, prev_start, prev_end):
                prev_end = prev_start - 1
                prev_start = masked.rfind("\n", 0, max(0, prev_end - 1)) + 1
            window = _squash(masked[max(prev_start, prev_end - window_chars) : prev_end] + " " + window)
        ss, se = _sentence_bounds(masked, ls, le, m.start, m.end)
        detached = _WORD.search(masked, ss, se) is None
        before = len(_squash(masked[: m.start])) / all_plain
        trailing = (
            _WORD.search(masked, le) is None  # the marker's line is the last one with words
            and _SENTENCE_END.search(masked, ls, m.start) is None  # in its first sentence
            and len(_squash(masked[:ls])) / all_plain >= trailing_min_position
        )
        placements[ad_id] = Placement(ad_id, window, detached, trailing, True, before)

    leak_chars = 0
    if _may_leak(plain_text) and _LEAK.search(plain_text):
        leak_chars = sum(len(s) for s in _SENTENCE_SPLIT.split(plain_text) if s.strip() and _LEAK.search(s))
    return Layout(
        placements=placements,
        n_words=len(_WORD.findall(masked)),
        ad_char_share=marker_chars / max(1, len(text.strip())),
        leak_share=leak_chars / all_plain,
        n_mentions=len(mentions),
    )
