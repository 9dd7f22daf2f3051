"""Event models and the codec: round trips, and one-line errors that name the bad field."""

import copy
import json
import pickle

import pytest

from llm_auction.schemas import (
    CandidateAd,
    Candidates,
    ClickEvent,
    QueryEvent,
    SCHEMA_VERSION,
    ResponseEvent,
    SchemaError,
    UserProfile,
    decode,
    encode,
)
from llm_auction.schemas.catalog import load_catalog


def _query(**kw) -> QueryEvent:
    user = UserProfile(user_id="u1", info="A young male white-collar worker.", interests=["yoga", "coffee"])
    cands = [CandidateAd(ad_id="Ad-4820", title="Dutch-imported Oriental Floral Coffee Cup", category="coffee ware", bid=42)]
    return QueryEvent(query_id="q1", user=user, query="Coffee after yoga?", candidates=cands, **kw)


def test_catalog_has_100_ads_over_50_categories_with_unique_ids_and_paper_ads():
    ads = load_catalog()
    assert len(ads) == 100 and len({a.ad_id for a in ads}) == 100
    assert len({a.category for a in ads}) == 50
    by_id = {a.ad_id: a.title for a in ads}
    assert by_id["Ad-4820"] == "Dutch-imported Oriental Floral Coffee Cup"
    assert by_id["Ad-3356"] == "American Ginseng Tea"


def test_round_trip_keeps_every_field():
    q = _query()
    back = decode(encode(q), QueryEvent)
    assert back == q and back.event_id == q.event_id and back.schema_version == SCHEMA_VERSION == 7
    assert back.bids() == {"Ad-4820": 42}


def test_response_must_be_consistent_with_its_query():
    q = _query()
    r = ResponseEvent.for_query(query_id="q1", policy_version="v0", query=q, text="t", exposed_ad_ids=["Ad-4820"], n_ads=1)
    assert decode(encode(r), ResponseEvent) == r
    with pytest.raises(ValueError, match="n_ads"):
        ResponseEvent.for_query(query_id="q1", policy_version="v0", query=q, text="t", exposed_ad_ids=["Ad-4820"], n_ads=2)
    with pytest.raises(ValueError, match="not among the candidates"):
        ResponseEvent.for_query(query_id="q1", policy_version="v0", query=q, text="t", exposed_ad_ids=["Ad-6542"], n_ads=1)


@pytest.mark.parametrize(
    "payload, field",
    [
        (b"{not json", "<payload>"),
        (b"\xff\xfe", "<payload>"),
        (b"[1, 2]", "<payload>"),
        (json.dumps({"query_id": "q", "ad_id": "Ad-12", "clicked": True, "policy_version": "v", "user_id": "u", "bid": 3}), "ad_id"),
        (json.dumps({"query_id": "q", "ad_id": "Ad-1234", "clicked": True, "policy_version": "v", "user_id": "u", "bid": 300}), "bid"),
        (json.dumps({"query_id": "q", "ad_id": "Ad-1234", "clicked": True, "policy_version": "v", "user_id": "u"}), "bid"),
        (json.dumps({"query_id": "q", "ad_id": "Ad-1234", "clicked": True, "policy_version": "v", "user_id": "u", "bid": 3, "x": 1}), "x"),
    ],
)
def test_bad_payload_raises_one_line_error_naming_the_field(payload, field):
    with pytest.raises(SchemaError) as e:
        decode(payload, ClickEvent)
    assert e.value.field == field
    msg = str(e.value)
    assert "\n" not in msg and f"'{field}'" in msg and msg.startswith("ClickEvent")


def test_nested_field_path_is_dotted():
    bad = json.loads(encode(_query()))
    bad["candidates"] = [{"ad_id": "Ad-4820", "title": "A cup", "category": "coffee ware", "bid": 0}]
    with pytest.raises(SchemaError) as e:
        decode(json.dumps(bad), QueryEvent)
    assert e.value.field == "candidates.0.bid"


def test_duplicates_are_rejected_on_every_decoding_path():
    odd = CandidateAd(ad_id="Ad-0001", title="Green Tea", category="tea", bid=9)
    catalog = _catalog_query()
    columns = json.loads(encode(catalog))
    columns["candidates"]["ad_ids"] = columns["candidates"]["ad_ids"].replace(catalog.candidates.ad_ids[1], "Ad-4820")
    pairs = {**columns, "candidates": [["Ad-4820", 5], ["Ad-4820", 5]]}
    whole = {**columns, "candidates": [odd.model_dump(), odd.model_dump()]}
    mixed = {**columns, "candidates": [odd.model_dump(), ["Ad-4820", 5], ["Ad-4820", 7]]}
    for wire in (columns, pairs, whole, mixed):
        with pytest.raises(SchemaError, match="duplicate ad_id"):
            decode(json.dumps(wire), QueryEvent)
    with pytest.raises(ValueError, match="duplicate ad_id"):  # built in Python, not decoded
        QueryEvent(query_id="q", user=catalog.user, query="q?", candidates=[odd, odd])


def test_naive_timestamps_become_utc():
    c = ClickEvent(query_id="q", ad_id="Ad-1234", clicked=False, policy_version="v", user_id="u", bid=5, ts="2026-01-01T00:00:00")
    assert c.ts.utcoffset().total_seconds() == 0


# ---------- candidates on the wire ----------
def _catalog_query(**over) -> QueryEvent:
    cands = [CandidateAd(**a.model_dump(), bid=1 + i % 100) for i, a in enumerate(load_catalog())]
    return _query().model_copy(update={"candidates": over.pop("candidates", cands)})


def test_catalog_candidates_travel_as_two_columns_and_come_back_whole():
    q = _catalog_query()
    raw = encode(q)
    wire = json.loads(raw)["candidates"]
    assert wire["ad_ids"].split(" ")[:2] == ["Ad-4820", load_catalog()[1].ad_id] and wire["bids"][:3] == [1, 2, 3]
    assert len(raw) < 1700  # ~10 KB with titles and categories, ~1.9 KB as [ad_id, bid] pairs
    back = decode(raw, QueryEvent)
    assert back == q and back.candidates[0].title == "Dutch-imported Oriental Floral Coffee Cup"
    assert back.bids() == q.bids() and back.candidates.catalog_only
    assert back.candidates == list(q.candidates) and len(back.candidates) == 100


def test_candidates_read_like_the_list_of_models_they_replace():
    q = _catalog_query()
    models = [CandidateAd(**a.model_dump(), bid=1 + i % 100) for i, a in enumerate(load_catalog())]
    c = q.candidates
    assert list(c) == models and c[5] == models[5] and c[-1] == models[-1]
    assert c[2:4] == models[2:4] and isinstance(c[2:4], Candidates) and len(c[2:4]) == 2
    assert [m.bid for m in c] == list(c.bids) and c.ad_ids == tuple(m.ad_id for m in models)
    assert c.highest_bid() == max(models, key=lambda m: m.bid)  # the first of the highest bids
    assert q.candidate("Ad-4820") == models[0] and q.candidate("Ad-0000") is None
    assert pickle.loads(pickle.dumps(q)) == q and copy.deepcopy(q) == q
    assert q.model_dump()["candidates"][0] == models[0].model_dump()  # python mode: whole dicts


def test_model_copy_converts_and_checks_new_candidates():
    q = _catalog_query()
    two = q.model_copy(update={"candidates": list(q.candidates)[:2]})
    assert isinstance(two.candidates, Candidates) and two.candidates.ad_ids == q.candidates.ad_ids[:2]
    with pytest.raises(ValueError, match="duplicate ad_id Ad-4820"):
        q.model_copy(update={"candidates": [q.candidates[0], q.candidates[0]]})


def test_candidates_outside_the_catalog_or_with_another_title_travel_whole():
    odd = CandidateAd(ad_id="Ad-0001", title="Green Tea", category="tea", bid=9)
    renamed = CandidateAd(ad_id="Ad-4820", title="Floral Coffee Cup XL", category="coffee ware", bid=3)
    q = _catalog_query(candidates=[odd, renamed, *_catalog_query().candidates[1:3]])
    assert not q.candidates.catalog_only
    wire = json.loads(encode(q))["candidates"]
    assert wire[0] == {"ad_id": "Ad-0001", "title": "Green Tea", "category": "tea", "bid": 9}
    assert wire[1]["title"] == "Floral Coffee Cup XL"  # kept, so the responder can reject it
    assert type(wire[2]) is list
    back = decode(encode(q), QueryEvent)
    assert back == q and back.candidates[0] == odd and back.candidates[1] == renamed


def test_the_version_3_list_of_pairs_is_still_read():
    q = _catalog_query()
    v3 = json.loads(encode(q))
    v3["candidates"] = [[c.ad_id, c.bid] for c in q.candidates]
    assert decode(json.dumps(v3), QueryEvent) == q


def _with_columns(**change) -> str:
    payload = json.loads(encode(_catalog_query()))
    payload["candidates"].update(change)
    return json.dumps(payload)


CATALOG_IDS = [a.ad_id for a in load_catalog()]


@pytest.mark.parametrize(
    "change, says",
    [
        ({"bids": [*range(1, 4), 0, *range(5, 101)]}, "candidates.3: bid must be an integer in 1..100, got 0"),
        ({"bids": [*range(1, 4), 101, *range(5, 101)]}, "candidates.3: bid must be an integer in 1..100, got 101"),
        ({"bids": [*range(1, 4), True, *range(5, 101)]}, "candidates.3: bid must be an integer in 1..100, got True"),
        ({"bids": [*range(1, 4), 5.0, *range(5, 101)]}, "candidates.3: bid must be an integer in 1..100, got 5.0"),
        ({"ad_ids": " ".join([*CATALOG_IDS[:3], "Ad-0000", *CATALOG_IDS[4:]])}, "candidates.3: 'Ad-0000' is not a catalog ad id"),
        ({"ad_ids": " ".join([*CATALOG_IDS[:3], CATALOG_IDS[0], *CATALOG_IDS[4:]])}, f"duplicate ad_id {CATALOG_IDS[0]}"),
        ({"bids": list(range(1, 100))}, "100 ad ids but 99 bids"),
        ({"ad_ids": "", "bids": []}, "at least one candidate"),
        ({"ad_ids": CATALOG_IDS}, "'ad_ids' is one string"),
        ({"extra": 1}, "exactly the keys 'ad_ids' and 'bids'"),
    ],
)
def test_a_bad_column_object_is_one_line_naming_the_candidate(change, says):
    with pytest.raises(SchemaError) as e:
        decode(_with_columns(**change), QueryEvent)
    assert e.value.field == "candidates" and says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "entry, says",
    [
        (["ID", 0], "bid must be an integer in 1..100"),
        (["ID", 101], "bid must be an integer in 1..100"),
        (["ID", True], "bid must be an integer in 1..100"),
        (["ID", 5.0], "bid must be an integer in 1..100"),
        (["Ad-0000", 5], "'Ad-0000' is not a catalog ad id"),
        (["ID"], "a compact candidate is [ad_id, bid]"),
        ([["ID"], 5], "is not a catalog ad id"),
    ],
)
def test_a_bad_compact_candidate_is_one_line_naming_it(entry, says):
    payload = json.loads(encode(_catalog_query()))
    payload["candidates"] = [[c.ad_id, c.bid] for c in _catalog_query().candidates]  # the version-3 list form
    payload["candidates"][3] = json.loads(json.dumps(entry).replace("ID", load_catalog()[3].ad_id))
    with pytest.raises(SchemaError) as e:
        decode(json.dumps(payload), QueryEvent)
    assert e.value.field == "candidates" and "candidates.3" in str(e.value) and says in str(e.value)
    assert "\n" not in str(e.value)


def test_shown_ad_ids_travel_as_one_string_and_a_list_is_still_read():
    q = _catalog_query()
    r = ResponseEvent.for_query(q, policy_version="v0", text="t", shown_ad_ids=list(q.candidates.ad_ids[:3]), n_ads=0)
    wire = json.loads(encode(r))
    assert wire["shown_ad_ids"] == " ".join(q.candidates.ad_ids[:3])
    back = decode(encode(r), ResponseEvent)
    assert back == r and back.shown_ad_ids == list(q.candidates.ad_ids[:3]) and r.model_dump()["shown_ad_ids"] == back.shown_ad_ids
    assert decode(json.dumps({**wire, "shown_ad_ids": list(q.candidates.ad_ids[:3])}), ResponseEvent) == r
    assert decode(json.dumps({**wire, "shown_ad_ids": ""}), ResponseEvent).shown_ad_ids == []
    for bad in ("Ad-4820  Ad-3356", "Ad-4820 Ad-33", "Ad-4820,Ad-3356", " Ad-4820"):
        with pytest.raises(SchemaError) as e:
            decode(json.dumps({**wire, "shown_ad_ids": bad}), ResponseEvent)
        assert e.value.field == "shown_ad_ids" and "separated by single spaces" in str(e.value)


def test_published_json_schemas_accept_every_wire_form_and_reject_what_decoding_rejects():
    """The JSON schemas (for producers in other languages) describe what goes on the wire: the
    column object and the version-3 lists of candidates, and shown ids as one string or a list."""
    from jsonschema import Draft202012Validator

    q = _catalog_query()
    odd = CandidateAd(ad_id="Ad-0001", title="Green Tea", category="tea", bid=9)
    mixed = _catalog_query(candidates=[odd, *q.candidates[1:3]])
    v3 = json.loads(encode(q))
    v3["candidates"] = [[c.ad_id, c.bid] for c in q.candidates]
    r = ResponseEvent.for_query(q, policy_version="v0", text="t", shown_ad_ids=list(q.candidates.ad_ids[:3]), n_ads=0)
    listed = {**json.loads(encode(r)), "shown_ad_ids": list(q.candidates.ad_ids[:3])}
    for model, docs in [(QueryEvent, [json.loads(encode(q)), json.loads(encode(mixed)), v3]), (ResponseEvent, [json.loads(encode(r)), listed])]:
        for mode in ("validation", "serialization"):
            check = Draft202012Validator(model.model_json_schema(mode=mode))
            for doc in docs:
                assert not list(check.iter_errors(doc)), (model.__name__, mode, [e.message for e in check.iter_errors(doc)][:2])
    check = Draft202012Validator(QueryEvent.model_json_schema())
    bad_bid = json.loads(encode(q))
    bad_bid["candidates"]["bids"][3] = 0
    bad_ids = json.loads(encode(q))
    bad_ids["candidates"]["ad_ids"] = "Ad-4820,Ad-3356"
    bad_pair = {**v3, "candidates": [["Ad-4820", 42, "extra"]]}
    for doc in (bad_bid, bad_ids, bad_pair):
        assert list(check.iter_errors(doc)), doc["candidates"]
        with pytest.raises(SchemaError):
            decode(json.dumps(doc), QueryEvent)
    bad_shown = {**json.loads(encode(r)), "shown_ad_ids": "Ad-4820  Ad-3356"}
    assert list(Draft202012Validator(ResponseEvent.model_json_schema()).iter_errors(bad_shown))


def test_rollout_event_states_the_decision_and_reads_the_older_form():
    from jsonschema import Draft202012Validator

    from llm_auction.schemas import RolloutEvent
    from llm_auction.schemas.events import ArmEvidence

    eid = RolloutEvent.decision_id("base", "policy-0001", "canary", 0.1)
    e = RolloutEvent(
        event_id=eid, stable_version="base", candidate_version="policy-0001", candidate_share=0.1, state="canary",
        reason="announced", evidence={"base": ArmEvidence(queries=10, revenue_per_query=3.5, reward_per_query=-1.0, format_error_rate=0.1)},
        test={"p_value": 0.4},
    )
    assert decode(encode(e), RolloutEvent) == e and e.routing_salt == "policy-0001" and e.schema_version == SCHEMA_VERSION
    assert eid == RolloutEvent.decision_id("base", "policy-0001", "canary", 0.1) != RolloutEvent.decision_id("base", "policy-0001", "canary", 0.2)
    assert RolloutEvent.decision_id("base", "policy-0001", "canary", 0.1, nonce="x") != eid
    assert not list(Draft202012Validator(RolloutEvent.model_json_schema()).iter_errors(json.loads(encode(e))))
    # schema version 4: action / policy_version / previous_version
    old = decode(json.dumps({"event_id": "e1", "schema_version": 4, "ts": "2026-01-01T00:00:00Z", "action": "rollback", "policy_version": "base", "previous_version": "policy-0002", "reason": "worse"}), RolloutEvent)
    assert (old.stable_version, old.candidate_version, old.candidate_share, old.state, old.reason) == ("base", "policy-0002", 0.0, "rolled_back", "worse")
    assert old.decided_at == old.ts
    pro = decode(json.dumps({"schema_version": 4, "action": "promote", "policy_version": "policy-0002"}), RolloutEvent)
    assert (pro.stable_version, pro.candidate_version, pro.state) == ("policy-0002", None, "promoted")
    done = RolloutEvent(stable_version="base", candidate_version="policy-0001", state="inconclusive", reason="inconclusive at 7500 queries",
                        evidence={"base": ArmEvidence(queries=9000, users=800, reward_per_query=-1.0)}, test={"diff": 0.4, "ci_low": -2.0, "ci_high": 2.8})
    assert decode(encode(done), RolloutEvent) == done and done.evidence["base"].users == 800
    assert decode(json.dumps({"queries": 3}), ArmEvidence).users == 0  # evidence recorded before users were counted
    for bad in ({"stable_version": "a", "state": "canary", "candidate_share": 0.2}, {"stable_version": "a", "candidate_version": "a", "state": "canary"},
                {"stable_version": "a", "state": "done"}, {"schema_version": 4, "action": "explode", "policy_version": "a"},
                {"stable_version": "a", "candidate_version": "b", "state": "canary", "candidate_share": 1.5}):
        with pytest.raises(SchemaError):
            decode(json.dumps(bad), RolloutEvent)


def test_ad_ids_take_ascii_digits_only():
    """``\\d`` in the id pattern matched any Unicode digit: ``Ad-١٢٣٤`` passed (found by the fuzz suite)."""
    from pydantic import TypeAdapter, ValidationError

    from llm_auction.schemas.ads import AdId

    ids = TypeAdapter(AdId)
    assert ids.validate_python("Ad-1234") == "Ad-1234"
    for bad in ("Ad-\u0661\u0662\u0663\u0664", "Ad-１２３４", "Ad-123", "Ad-12345"):
        with pytest.raises(ValidationError):
            ids.validate_python(bad)


def test_a_dead_letter_builds_from_any_record_and_stays_small():
    from llm_auction.schemas import DeadLetter

    dl = DeadLetter.of(b"\xff" + b"x" * 200_000, "e" * 5000, source_topic="auction.queries", partition=2, offset=7, key=b"q\xfe1", consumer="sink")
    assert dl.payload.startswith("\ufffd") and len(dl.payload) == DeadLetter.PAYLOAD_CHARS
    assert len(dl.error) == DeadLetter.ERROR_CHARS and dl.key == "q\ufffd1"
    assert (dl.source_topic, dl.partition, dl.offset, dl.consumer) == ("auction.queries", 2, 7, "sink")
    assert decode(encode(dl), DeadLetter) == dl
    bare = DeadLetter.of(None, "  ", source_topic="t")
    assert (bare.payload, bare.error, bare.key, bare.partition) == ("", "unknown", None, None)
    assert DeadLetter.of("text", "bad", source_topic="t", key="k").key == "k"
