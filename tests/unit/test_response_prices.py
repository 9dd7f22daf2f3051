"""Schema version 6: a response's per-click prices and cost, a click's price, and the older form still read."""

from __future__ import annotations

import json

import pytest

from llm_auction.models.user_sim.base import Decision, build_click_events
from llm_auction.schemas import SCHEMA_VERSION, CandidateAd, ClickEvent, QueryEvent, ResponseEvent, SchemaError, UserProfile, decode, encode

USER = UserProfile(user_id="u1", info="likes tea", interests=["tea"])
ADS = [CandidateAd(ad_id="Ad-0001", title="Green Tea", category="tea", bid=40), CandidateAd(ad_id="Ad-0002", title="Mug", category="home", bid=7),
       CandidateAd(ad_id="Ad-0003", title="Kettle", category="home", bid=25)]
QUERY = QueryEvent(query_id="q1", user=USER, query="which tea?", candidates=ADS)


def response(exposed=("Ad-0001", "Ad-0002"), **fields) -> ResponseEvent:
    return ResponseEvent.for_query(QUERY, policy_version="slot", text="t", exposed_ad_ids=list(exposed), n_ads=len(exposed), **fields)


def test_prices_are_one_per_exposed_ad_or_none():
    assert response(prices=[7.0, 3.5]).prices == [7.0, 3.5]
    assert response().prices == [] and response(exposed=(), prices=[]).prices == []
    for bad in ([7.0], [7.0, 3.5, 1.0]):
        with pytest.raises(ValueError, match="prices: one per exposed ad, or none"):
            response(prices=bad)
    with pytest.raises(ValueError, match="prices: one per exposed ad"):
        response(exposed=(), prices=[1.0])
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        response(prices=[7.0, -0.5])
    assert response(prices=[0.0, 0.0]).prices == [0.0, 0.0]  # a free click is a price


def test_a_bad_price_on_the_wire_is_one_line_naming_the_field():
    wire = json.loads(encode(response(prices=[7.0, 3.5])))
    with pytest.raises(SchemaError) as e:
        decode(json.dumps({**wire, "prices": [7.0, -1.0]}), ResponseEvent)
    assert e.value.field == "prices.1" and "\n" not in str(e.value)
    with pytest.raises(SchemaError) as e:
        decode(json.dumps({**wire, "prices": [7.0]}), ResponseEvent)
    assert "prices: one per exposed ad" in str(e.value) and "\n" not in str(e.value)
    for field, bad in (("generations", -1), ("generated_tokens", -3), ("generation_s", -0.1)):
        with pytest.raises(SchemaError) as e:
            decode(json.dumps({**wire, field: bad}), ResponseEvent)
        assert e.value.field == field


def test_price_map_is_the_prices_in_exposure_order_else_the_bids():
    assert response(exposed=("Ad-0002", "Ad-0001"), prices=[6.5, 0.0]).price_map() == {"Ad-0002": 6.5, "Ad-0001": 0.0}
    first = response(exposed=("Ad-0002", "Ad-0001"))
    assert first.price_map() == {"Ad-0002": 7.0, "Ad-0001": 40.0}
    assert all(isinstance(v, float) for v in first.price_map().values())
    assert response(exposed=()).price_map() == {}


def test_a_click_pays_its_price_else_its_bid():
    c = ClickEvent(query_id="q1", ad_id="Ad-0001", clicked=True, policy_version="slot", user_id="u1", bid=40)
    assert c.price is None and c.charge == 40.0 and isinstance(c.charge, float)
    assert c.model_copy(update={"price": 12.25}).charge == 12.25
    assert ClickEvent(query_id="q1", ad_id="Ad-0001", clicked=True, policy_version="slot", user_id="u1", bid=40, price=0.0).charge == 0.0
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ClickEvent(query_id="q1", ad_id="Ad-0001", clicked=True, policy_version="slot", user_id="u1", bid=40, price=-1.0)


def test_version_6_round_trips_the_cost_and_prices():
    r = response(prices=[7.0, 3.5], generations=4, generated_tokens=512, generation_s=1.25)
    back = decode(encode(r), ResponseEvent)
    assert back == r and back.schema_version == SCHEMA_VERSION == 7
    assert (back.generations, back.generated_tokens, back.generation_s, back.prices) == (4, 512, 1.25, [7.0, 3.5])
    c = ClickEvent(query_id="q1", ad_id="Ad-0001", clicked=True, policy_version="slot", user_id="u1", bid=40, price=7.0)
    assert decode(encode(c), ClickEvent) == c


def test_an_older_response_and_click_without_the_new_fields_still_decode_as_first_price_one_generation():
    r = json.loads(encode(response()))
    for field in ("generations", "generated_tokens", "generation_s", "prices"):
        del r[field]
    old = decode(json.dumps({**r, "schema_version": 5}), ResponseEvent)
    assert (old.schema_version, old.generations, old.generated_tokens, old.generation_s, old.prices) == (5, 1, 0, 0.0, [])
    assert old.price_map() == old.bids() == {"Ad-0001": 40, "Ad-0002": 7}
    c = json.loads(encode(ClickEvent(query_id="q1", ad_id="Ad-0001", clicked=True, policy_version="v1", user_id="u1", bid=40)))
    del c["price"]
    old_click = decode(json.dumps({**c, "schema_version": 5}), ClickEvent)
    assert old_click.price is None and old_click.charge == 40.0


def test_clicks_copy_the_price_of_their_ad_and_none_under_first_price():
    decisions = {"Ad-0001": Decision(True, "relevant", 0.4), "Ad-0003": Decision(False, "off topic", 0.1)}
    priced = build_click_events(response(exposed=("Ad-0003", "Ad-0001"), prices=[5.5, 24.0]), decisions)
    assert [(c.ad_id, c.bid, c.price, c.charge, c.clicked) for c in priced] == [("Ad-0003", 25, 5.5, 5.5, False), ("Ad-0001", 40, 24.0, 24.0, True)]
    first = build_click_events(response(exposed=("Ad-0003", "Ad-0001")), decisions)
    assert [(c.ad_id, c.price, c.charge) for c in first] == [("Ad-0003", None, 25.0), ("Ad-0001", None, 40.0)]
