"""What the fuzz tests feed the services: valid base events, the ways to break each field, and
text that is valid but hostile (control characters, quotes, SQL fragments, huge strings).

A service sees bytes; the bad payloads here are JSON objects that are valid events but for one
field (wrong type, out of range, malformed, blank, missing, or an extra field), so the reason a
service gives can be checked against the field that was broken.
"""

from __future__ import annotations

import json
import re
from collections import namedtuple

from hypothesis import strategies as st

from llm_auction.models.stored_backend import TEMPLATE
from llm_auction.schemas import ClickEvent, QueryEvent, ResponseEvent, UserProfile, encode
from llm_auction.schemas.catalog import load_catalog

Rec = namedtuple("Rec", "topic partition offset key value timestamp")
CATALOG = load_catalog()
BY_ID = {a.ad_id: a for a in CATALOG}


# -- valid base events ---------------------------------------------------------------------------
def base_query(query_id: str = "fuzz.q1", **over) -> QueryEvent:
    ads = CATALOG[:8]
    fields = dict(
        query_id=query_id, user=UserProfile(user_id="u1", info="likes green tea", interests=["tea", "hiking"]),
        query="which tea should I buy for a long hike?",
        candidates=[{"ad_id": a.ad_id, "title": a.title, "category": a.category, "bid": 10 + 7 * i} for i, a in enumerate(ads)],
    )
    return QueryEvent(**(fields | over))


def base_response(query: QueryEvent | None = None, text: str | None = None) -> ResponseEvent:
    q = query or base_query()
    best = q.candidates.highest_bid()
    return ResponseEvent.for_query(
        q, policy_version="base", text=text if text is not None else TEMPLATE.format(title=best.title, ad_id=best.ad_id),
        exposed_ad_ids=[best.ad_id], n_ads=1, shown_ad_ids=list(q.candidates.ad_ids),
    )


def base_click(**over) -> ClickEvent:
    a = CATALOG[3]
    return ClickEvent(**({"query_id": "fuzz.q1", "ad_id": a.ad_id, "clicked": True, "policy_version": "base", "user_id": "u1", "bid": 42, "click_probability": 0.2} | over))


def wire(event) -> dict:
    return json.loads(encode(event))


# -- bad values ------------------------------------------------------------------------------------
_AD_ID = re.compile(r"Ad-\d{4}")
_NO_DIGITS = st.text(alphabet=st.characters(blacklist_categories=("Nd", "No", "Nl", "Cs")), max_size=20)
_CATALOG_IDS = st.sampled_from([a.ad_id for a in CATALOG])
_UNKNOWN_IDS = st.integers(0, 9999).map(lambda i: f"Ad-{i:04d}").filter(lambda a: a not in BY_ID)

not_str = st.one_of(
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
blank = st.text(alphabet=" \t\r\n\u2028\u3000\x0b\x0c", max_size=6)  # nothing left once stripped
not_int = st.one_of(
    _NO_DIGITS, st.none(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),  # non-integer numbers
)
bad_bid = st.one_of(st.integers(max_value=0), st.integers(min_value=101), not_int)
bad_ad_id = st.one_of(
    st.text(max_size=30).filter(lambda s: _AD_ID.fullmatch(s) is None),
    st.integers(5, 200).map(lambda n: "Ad-" + "7" * n),  # huge
    st.integers(0, 999).map(lambda i: f"ad-{i:04d}"), st.just("Ad-12 3"), st.just("Ad-0001\n"),
    not_str.filter(lambda v: not isinstance(v, str)),
)
bad_ts = st.one_of(_NO_DIGITS, st.none(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1), st.just("2026-13-45T99:00:00Z"))
bad_candidate_obj = st.fixed_dictionaries({"ad_id": bad_ad_id, "title": st.just("T"), "category": st.just("c"), "bid": st.integers(1, 100)}) | st.fixed_dictionaries(
    {"ad_id": _CATALOG_IDS, "title": st.just("T"), "category": st.just("c"), "bid": bad_bid})


def _columns(ids, bids):
    return {"ad_ids": " ".join(ids), "bids": bids}


bad_candidates = st.one_of(
    st.builds(lambda a: _columns([a], [5]), _UNKNOWN_IDS),  # unknown ad id, compact form
    st.builds(lambda a, b: [[a, b]], _CATALOG_IDS, bad_bid),  # bad bid, pair form
    st.builds(lambda a, b: _columns([a], [b]), _CATALOG_IDS, bad_bid),  # bad bid, column form
    st.builds(lambda a: _columns([a, a], [5, 6]), _CATALOG_IDS),  # duplicate ad id
    st.builds(lambda a: _columns([a], [5, 6]), _CATALOG_IDS),  # columns of different lengths
    st.just(_columns([], [])), st.just([]),  # no candidate
    st.builds(lambda c: [c], bad_candidate_obj),  # whole object with a bad id or bid
    st.builds(lambda a: [[a, 5, 9]], _CATALOG_IDS),  # a pair of three
    not_str.filter(lambda v: not isinstance(v, (list, dict))) | _NO_DIGITS,
)
bad_interests = st.one_of(st.just([]), st.lists(st.just("tea"), min_size=11, max_size=14), st.lists(blank, min_size=1, max_size=2), not_str.filter(lambda v: not isinstance(v, list)))
bad_user = st.one_of(not_str.filter(lambda v: not isinstance(v, dict)), st.just({"user_id": "u1"}), st.just({}))
bad_exposed = st.one_of(st.builds(lambda c: [c], bad_candidate_obj), not_str.filter(lambda v: not isinstance(v, list)))
bad_shown = st.one_of(
    st.text(max_size=40).filter(lambda s: s and re.fullmatch(r"(Ad-[0-9]{4}( Ad-[0-9]{4})*)?", s) is None),
    st.just("Ad-0001  Ad-0002"), st.just(" Ad-0001"), st.integers(), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
bad_probability = st.one_of(st.floats(max_value=-1e-9, allow_infinity=False), st.floats(min_value=1.000001, allow_infinity=False), _NO_DIGITS, st.lists(st.integers(), max_size=1))
bad_bool = st.sampled_from(["maybe", "2", 2, -1, 0.5, [], {}, None, "truee"])
bad_n_ads = st.one_of(st.integers(max_value=-1), st.integers(min_value=2, max_value=10**6), not_int)  # the base exposes one ad
bad_latency = st.one_of(st.floats(max_value=-1e-9, allow_infinity=False), st.none(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))

_COMMON = {
    "event_id": not_str.filter(lambda v: not isinstance(v, str)),
    "schema_version": not_int,
    "ts": bad_ts,
}
BREAKS: dict[type, dict[str, st.SearchStrategy]] = {
    QueryEvent: _COMMON | {
        "query_id": st.one_of(blank, not_str), "user": bad_user, "user.user_id": st.one_of(blank, not_str), "user.info": st.one_of(blank, not_str),
        "user.interests": bad_interests, "query": st.one_of(blank, not_str), "candidates": bad_candidates,
        "split": st.one_of(st.text(max_size=8).filter(lambda s: s not in {"train", "test", "live"}), not_str),
    },
    ResponseEvent: _COMMON | {
        "query_id": st.one_of(blank, not_str), "policy_version": st.one_of(blank, not_str), "user": bad_user, "query": st.one_of(blank, not_str),
        "text": not_str.filter(lambda v: not isinstance(v, str)), "exposed_ads": bad_exposed, "n_ads": bad_n_ads, "format_error": bad_bool,
        "format_reasons": st.one_of(st.lists(not_str.filter(lambda v: not isinstance(v, str)), min_size=1, max_size=2), st.integers()),
        "shown_ad_ids": bad_shown, "latency_ms": bad_latency,
    },
    ClickEvent: _COMMON | {
        "query_id": st.one_of(blank, not_str), "ad_id": bad_ad_id, "clicked": bad_bool, "reason": not_str.filter(lambda v: not isinstance(v, str)),
        "policy_version": st.one_of(blank, not_str), "user_id": st.one_of(blank, not_str), "bid": bad_bid, "click_probability": bad_probability,
    },
}
REQUIRED = {QueryEvent: ["query_id", "user", "query", "candidates"], ResponseEvent: ["query_id", "policy_version", "user", "query", "text", "n_ads"], ClickEvent: ["query_id", "ad_id", "clicked", "policy_version", "user_id", "bid"]}
BASES = {QueryEvent: lambda: wire(base_query()), ResponseEvent: lambda: wire(base_response()), ClickEvent: lambda: wire(base_click())}


@st.composite
def broken_event(draw, model: type | None = None) -> tuple[type, str, bytes]:
    """(model, the broken field's dotted path or a description, the payload)."""
    model = model or draw(st.sampled_from(list(BREAKS)))
    doc = BASES[model]()
    how = draw(st.sampled_from(["value", "value", "value", "missing", "extra"]))
    if how == "missing":
        path = draw(st.sampled_from(REQUIRED[model]))
        del doc[path]
    elif how == "extra":
        path = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(lambda k: k not in doc))
        doc[path] = draw(st.one_of(st.text(max_size=10), st.integers()))
    else:
        path = draw(st.sampled_from(sorted(BREAKS[model])))
        *parents, leaf = path.split(".")
        target = doc
        for p in parents:
            target = target[p]
        target[leaf] = draw(BREAKS[model][path])
    return model, path, json.dumps(doc).encode()


# -- garbage ---------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12,
)
garbage = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=300).map(lambda s: s.encode("utf-8")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(min_size=1, max_size=40).map(lambda b: b'{"query_id": "' + b + b'"'),  # cut-off JSON with raw bytes
)


# -- valid but hostile text ------------------------------------------------------------------------
SQL_AND_QUOTES = [
    "'; DROP TABLE llm_auction.clicks; --", "' OR '1'='1", '"); DELETE FROM llm_auction.responses WHERE 1=1; --',
    "\\'", "\\", "`x`", "{m:String}", "{{x}}", "%(x)s", "%s", "?", "$1", "/* c */", "\\N", "NULL", "\\0",
    "INSERT INTO llm_auction.clicks VALUES", "'); SELECT sleep(3); --", "FORMAT JSON",
]
CONTROL = ["\x00", "\x01", "\x07", "\x1b[31m", "\r\n", "\t", "\x7f", "\u2028", "\u2029", "\ufeff", "\u202e", "\U0001f600"]
hostile_text = st.lists(
    st.one_of(st.sampled_from(SQL_AND_QUOTES), st.sampled_from(CONTROL), st.text(max_size=12)), min_size=1, max_size=8,
).map("".join)


def nonblank(s: str) -> str:
    """Hostile text that survives the models' whitespace stripping as a non-empty string."""
    return f"x{s}x"
