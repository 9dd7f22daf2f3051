"""Finding ad markers in an answer.

An ad is inserted as ``@Ad Title@[Ad-XXXX]``. Renderers and the paper's own tables also show it
inside a markdown link, ``[@Ad Title@[Ad-XXXX]](#)``, sometimes with the inner brackets escaped
(``\\[Ad-XXXX\\]``) or a space before them (Table 1). Those are the same marker: presentation,
not a different format.

Anything else that looks like an attempt at a marker -- an ``Ad-NNNN`` id outside a marker, a
``@title@`` followed by a broken id, an unclosed bracket -- is returned as a *malformed* mention,
which the allocation counts as a format error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# @title@ then optional spaces, an optionally backslash-escaped [Ad-digits].
# The opening is spelled as two alternatives that each start with a literal ("[@" or "@") rather
# than as an optional "[": that lets the regex engine jump from one "[" or "@" to the next in C
# instead of trying the whole pattern at every character (figures: docs/benchmarks.md#figures-behind-defaults-and-code-choices).
# ``link`` is an empty group that records the markdown-link form.
_MARKER = re.compile(
    r"(?:\[(?P<link>)@|@)"  # "@", or "[@" opening a markdown link
    r"(?P<title>[^@\n]{1,200}?)@[ \t]?"
    r"\\?\[(?P<id>Ad-\d+)\\?\]"
    r"(?(link)\]\([^)\s]*\))"  # if opened as a link, require the closing ](target)
)
# Leftover traces of an attempted marker once the well-formed ones are masked out.
_STRAY_ID = re.compile(r"\bAd-\d+\b|\[Ad-[^\]\n]*\]?")
_BROKEN_MARKER = re.compile(r"@[^@\n]{1,200}@[ \t]?\\?\[")


@dataclass(frozen=True)
class AdMention:
    """One ad marker (or an attempt at one) and where it sits in the text."""

    title: str | None
    ad_id: str | None
    start: int
    end: int
    raw: str
    well_formed: bool = True


def parse_ads(text: str) -> list[AdMention]:
    """All ad mentions in ``text``, in order of position; malformed attempts included."""
    mentions: list[AdMention] = []
    # The well-formed markers blanked out (same length, so positions still match ``text``).
    pieces: list[str] = []
    done = 0
    for m in _MARKER.finditer(text):
        start, end = m.span()
        mentions.append(AdMention(m.group("title"), m.group("id"), start, end, m.group(0)))
        pieces += (text[done:start], " " * (end - start))
        done = end
    rest = "".join(pieces) + text[done:] if pieces else text
    # Usually nothing is left to find: skip a scan whose pattern needs a text the rest lacks
    # ("@" for a broken marker, "Ad-" for a stray id), a substring test being far cheaper.
    patterns = [p for p, needed in ((_BROKEN_MARKER, "@"), (_STRAY_ID, "Ad-")) if needed in rest]
    taken: list[tuple[int, int]] = []
    for pattern in patterns:
        for m in pattern.finditer(rest):
            if any(s <= m.start() < e for s, e in taken):
                continue
            end = m.end()
            # A broken marker swallows the stray id that follows it: one attempt, one mention.
            tail = _STRAY_ID.match(rest, end) if pattern is _BROKEN_MARKER else None
            if tail:
                end = tail.end()
            taken.append((m.start(), end))
            ad_id = re.search(r"Ad-\d+", rest[m.start() : end])
            mentions.append(
                AdMention(None, ad_id.group(0) if ad_id else None, m.start(), end, text[m.start() : end], well_formed=False)
            )
    mentions.sort(key=lambda x: x.start)
    return mentions
