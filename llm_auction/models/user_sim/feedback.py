"""Reading the User-LLM's click feedback: strict JSON, a bounded repair path, never an exception.

The prompt asks for a JSON list ``[{"ad_id": ..., "clicked": true|false, "reason": ...}]`` and
nothing else. Small models wrap it in prose or code fences, leave trailing commas, use single
quotes or Python literals. Those are repaired when the repair cannot change the meaning; anything
else is rejected. The result always covers every exposed ad, because the click contract is one
decision per exposure:

- ids that were not exposed are ignored (a click on them is not billable anyway);
- exposed ids the reply leaves out count as not clicked;
- a rejected reply gives no clicks, and says why in ``problem`` (the caller counts and logs it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

_FENCE = re.compile(r"```[a-zA-Z]*\s*|```")
_THINK = re.compile(r"<think>.*?</think>", re.S)
_TRAILING_COMMA = re.compile(r",(\s*[\]}])")
_PY_LITERALS = re.compile(r"\b(True|False|None)\b")
_TRUE = {"true", "yes", "1", "clicked", "click"}
_FALSE = {"false", "no", "0", "not clicked", "skip", ""}

Decisions = dict[str, tuple[bool, str]]


def _balanced(text: str, start: int, open_ch: str, close_ch: str) -> str | None:
    """The bracket-balanced span from ``text[start]`` (an ``open_ch``), aware of quoted strings."""
    depth, quote, esc = 0, None, False
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == quote:
                quote = None
            continue
        if c in "\"'":
            # An apostrophe inside a word ("user's") is prose, not a quote.
            if c == "'" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
                continue
            quote = c
        elif c == open_ch:
            depth += 1
        elif c == close_ch:
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def _requote(span: str) -> str:
    """Single-quoted strings to JSON strings and Python's True/False/None to JSON, outside strings only."""
    out: list[str] = []
    i, n = 0, len(span)
    while i < n:
        c = span[i]
        if c in "\"'":
            j, buf = i + 1, []
            while j < n and span[j] != c:
                if span[j] == "\\" and j + 1 < n:
                    buf.append(span[j : j + 2] if span[j + 1] != "'" else "'")
                    j += 2
                    continue
                buf.append('\\"' if span[j] == '"' else span[j])
                j += 1
            out.append('"' + "".join(buf) + '"')
            i = j + 1
            continue
        m = _PY_LITERALS.match(span, i)
        if m and (i == 0 or not span[i - 1].isalnum()):
            out.append({"True": "true", "False": "false", "None": "null"}[m.group(1)])
            i = m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _load(span: str, repairs: list[str]):
    """json.loads, then the safe repairs one after another; None when nothing parses."""
    try:
        return json.loads(span)
    except ValueError:
        pass
    for name, fix in (
        ("trailing comma", lambda t: _TRAILING_COMMA.sub(r"\1", t)),
        ("single quotes or Python literals", lambda t: _TRAILING_COMMA.sub(r"\1", _requote(t))),
    ):
        try:
            out = json.loads(fix(span))
        except ValueError:
            continue
        repairs.append(name)
        return out
    return None


def extract_json_list(text: str) -> tuple[list | None, list[str]]:
    """The first JSON list of objects (or ``[]``) in ``text``, and the repairs it took.

    A reply with no list but one object is read as a one-item list (a repair).
    """
    repairs: list[str] = []
    cleaned = _THINK.sub("", text)
    if "```" in cleaned:
        cleaned = _FENCE.sub("\n", cleaned)
        repairs.append("code fence")
    stripped = cleaned.strip()
    for i, c in enumerate(cleaned):
        if c != "[":
            continue
        span = _balanced(cleaned, i, "[", "]")
        if span is None:
            continue
        obj = _load(span, repairs)
        if isinstance(obj, list) and (not obj or all(isinstance(x, dict) for x in obj)):
            if not stripped.startswith(span):
                repairs.append("text around the list")
            return obj, repairs
    for i, c in enumerate(cleaned):
        if c != "{":
            continue
        span = _balanced(cleaned, i, "{", "}")
        obj = _load(span, repairs) if span else None
        if isinstance(obj, dict):
            repairs.append("single object, no list")
            return [obj], repairs
    return None, repairs


def _as_bool(v) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    return None


def parse_click_feedback(text: str, exposed_ids: Sequence[str], notes: list[str] | None = None) -> tuple[Decisions, str | None]:
    """Decisions for every exposed id, and ``problem``: None when the reply was usable, else why not.

    ``notes`` (optional) receives the non-fatal findings: repairs made, ids ignored or missing.
    A usable reply may be an empty list (no ads clicked). A rejected one yields all not clicked.
    """
    notes = notes if notes is not None else []
    exposed = list(dict.fromkeys(exposed_ids))
    items, repairs = extract_json_list(text or "")
    notes.extend(f"repaired: {r}" for r in repairs)
    if items is None:
        return {a: (False, "unparseable feedback") for a in exposed}, "no JSON list of click decisions in the reply"
    out: Decisions = {}
    bad = 0
    for it in items:
        ad_id = it.get("ad_id", it.get("id", it.get("adId")))
        clicked = _as_bool(it.get("clicked"))
        if not isinstance(ad_id, str) or clicked is None:
            bad += 1
            continue
        ad_id = ad_id.strip().strip("[]")
        if ad_id not in exposed:
            notes.append(f"ignored id not exposed: {ad_id}")
            continue
        if ad_id in out:
            notes.append(f"duplicate id, first kept: {ad_id}")
            continue
        reason = it.get("reason", "")
        out[ad_id] = (clicked, reason if isinstance(reason, str) else json.dumps(reason))
    if items and bad == len(items):
        return {a: (False, "unparseable feedback") for a in exposed}, f"no item has an ad_id and a boolean clicked ({bad} items)"
    if bad:
        notes.append(f"skipped {bad} malformed items")
    for a in exposed:
        if a not in out:
            notes.append(f"missing id counted as not clicked: {a}")
            out[a] = (False, "no feedback for this ad")
    return {a: out[a] for a in exposed}, None
