"""Bad input, fuzzed (issue 15, fault suite item 4), one record at a time through the real service
loop (``StreamService.process``: the codec's decode, then the real handler) of each service: the
responder (stored answers, or an echo backend whose answer is the query text), the user simulator
(the embedding click model on real MiniLM) and the sink (embedded ClickHouse). Only the consumer
and the producer are in-memory doubles here; ``test_bad_input_broker.py`` runs the same inputs
through services on the real broker.

- Random bytes, wrong types, out-of-range and non-integer bids, malformed or unknown ad ids,
  blank or missing fields, extra fields: each record is dead-lettered exactly once per service
  that reads it, with a reason naming the model and the field, and nothing else is produced.
- Valid events whose every text field holds control characters, quotes and SQL fragments, or
  huge strings: answered, clicked and stored verbatim (a round trip through the real sink into
  ClickHouse, read back with a bound parameter): values reach SQL only as data.
- Answers with thousands of markers: the mechanism reads them as format errors (a response with
  the penalty, not a dead letter), in bounded time, and the user simulator copes with them.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Sequence

import pytest
from faults_support import report_counts
from fuzz_inputs import (
    CATALOG,
    Rec,
    base_click,
    base_query,
    base_response,
    broken_event,
    garbage,
    hostile_text,
    nonblank,
    wire,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_auction.consumers.responder import ResponderHandler
from llm_auction.consumers.routing import PolicyRouter
from llm_auction.consumers.service import ServiceConfig, StreamService
from llm_auction.consumers.sink import SinkHandler
from llm_auction.consumers.user_sim import UserSimHandler
from llm_auction.models.stored_backend import StoredAnswerBackend
from llm_auction.schemas import ClickEvent, DeadLetter, QueryEvent, ResponseEvent, UserProfile, decode
from llm_auction.schemas.topics import CLICKS, DEAD_LETTER, QUERIES, RESPONSES

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large], derandomize=True, database=None)
TOPIC_MODEL = {QUERIES: QueryEvent, RESPONSES: ResponseEvent, CLICKS: ClickEvent}
_unique = itertools.count()


class _Acked:
    """A send the broker acknowledged at once."""

    is_done, exception = True, None

    def add_callback(self, fn):
        fn("metadata")


class AckingProducer:
    def __init__(self):
        self.sent: list[tuple[str, bytes, bytes]] = []

    def send(self, topic, key=None, value=None, partition=None):
        self.sent.append((topic, key, value))
        return _Acked()

    def partitions_for(self, topic):
        return None

    def flush(self):
        pass


class NoConsumer:
    def commit(self, offsets=None):
        pass

    def commit_async(self, offsets=None, callback=None):
        pass


class Harness:
    """One service's real loop and handler; :meth:`feed` processes one record and returns what
    the service produced (outputs) and dead-lettered."""

    def __init__(self, name: str, topics: Sequence[str], handler, tally: Counter | None = None):
        self.name = name
        self.tally = tally if tally is not None else Counter()  # records fed, dead letters, outputs
        self.producer = AckingProducer()
        config = ServiceConfig(name, f"fuzz-{name}", {t: TOPIC_MODEL[t] for t in topics}, copartition=False)
        self.svc = StreamService(config, handler, NoConsumer(), self.producer)
        self.topics = set(topics)
        self.offset = 0

    def feed(self, topic: str, value: bytes, key: bytes = b"fuzz") -> tuple[list[tuple[str, bytes]], list[DeadLetter]]:
        start = len(self.producer.sent)
        self.offset += 1
        self.svc.process([Rec(topic, 0, self.offset, key, value, int(time.time() * 1000))])
        new = self.producer.sent[start:]
        dead = [decode(v, DeadLetter) for t, _, v in new if t == DEAD_LETTER]
        outputs = [(t, v) for t, _, v in new if t != DEAD_LETTER]
        self.tally.update(records_fed=1, dead_letters=len(dead), outputs=len(outputs))
        return outputs, dead

    def assert_dead_lettered_once(self, topic: str, value: bytes) -> DeadLetter:
        outputs, dead = self.feed(topic, value)
        assert outputs == [], f"{self.name} produced {outputs[:1]} for a bad record"
        assert len(dead) == 1, f"{self.name}: {len(dead)} dead letters"
        (d,) = dead
        assert d.consumer == self.name and d.source_topic == topic and d.offset == self.offset and d.error.strip()
        assert d.payload == value.decode("utf-8", "replace")[:100_000] and len(d.error) <= 2000
        return d


class EchoBackend:
    """An Ad-LLM whose answer is the query text: the fuzzer writes the answers."""

    name = "echo"

    def generate(self, queries, policy_version, n: int = 1):
        return [[q.query] * n for q in queries]


@pytest.fixture(scope="module")
def user_sim_handler(text_encoder):
    from llm_auction.models.user_sim import make_user_simulator

    return UserSimHandler(make_user_simulator("embedding", seed=3, encoder=text_encoder))


@pytest.fixture
def tally(record_property):
    """What the test's services were fed and did, summed over its examples; printed in the summary."""
    counts = Counter()
    yield counts
    report_counts(record_property, **counts)


@pytest.fixture
def services(user_sim_handler, clickhouse_client, tally):
    """Responder, user simulator and sink, each on the topics it reads in production."""
    return {
        "responder": Harness("responder", [QUERIES], ResponderHandler(StoredAnswerBackend(), CATALOG, PolicyRouter("base")), tally),
        "user-sim": Harness("user-sim", [RESPONSES], user_sim_handler, tally),
        "sink": Harness("sink", [QUERIES, RESPONSES, CLICKS], SinkHandler(clickhouse_client), tally),
    }


def _readers(services, topic):
    return [h for h in services.values() if topic in h.topics]


@FUZZ
@given(payload=garbage, topic=st.sampled_from([QUERIES, RESPONSES, CLICKS]))
def test_random_bytes_and_json_are_dead_lettered_once_by_every_reader(services, payload, topic):
    for h in _readers(services, topic):
        d = h.assert_dead_lettered_once(topic, payload)
        assert d.error.startswith(f"{TOPIC_MODEL[topic].__name__}: field '")


@FUZZ
@given(case=broken_event())
def test_a_broken_field_is_dead_lettered_once_with_a_reason_naming_it(services, case):
    model, path, payload = case
    topic = next(t for t, m in TOPIC_MODEL.items() if m is model)
    for h in _readers(services, topic):
        d = h.assert_dead_lettered_once(topic, payload)
        assert d.error.startswith(f"{model.__name__}: field '"), d.error
        named = d.error.split("'")[1]
        # the field it names is the broken one (or inside it); a rule across fields names the payload
        assert named.split(".")[0] == path.split(".")[0] or named == "<payload>", (path, d.error)


def test_unknown_ad_ids_and_changed_titles_are_dead_lettered_by_the_responder(services):
    """The catalog is checked where the mechanism needs it: compact candidates must be catalog ids
    (a schema error for every reader); whole candidates outside the catalog, or with another title,
    are decoded (the sink keeps the query as received) and the responder refuses to answer them."""
    a = CATALOG[0]
    compact_unknown = json.dumps(wire(base_query()) | {"candidates": {"ad_ids": "Ad-9999", "bids": [50]}}).encode()
    for h in _readers(services, QUERIES):
        assert "not a catalog ad id" in h.assert_dead_lettered_once(QUERIES, compact_unknown).error
    for cand, says in [
        ({"ad_id": "Ad-9999", "title": "No Such Ad", "category": "none", "bid": 50}, "unknown ad id Ad-9999"),
        ({"ad_id": a.ad_id, "title": a.title + " (now cheaper)", "category": a.category, "bid": 50}, f"title of {a.ad_id} differs"),
    ]:
        payload = json.dumps(wire(base_query()) | {"candidates": [cand]}).encode()
        assert says in services["responder"].assert_dead_lettered_once(QUERIES, payload).error
        outputs, dead = services["sink"].feed(QUERIES, payload)
        assert outputs == [] and dead == []


def _stored(client, table: str, event_id: str, columns: str) -> dict:
    r = client.query(f"SELECT {columns} FROM llm_auction.{table} FINAL WHERE event_id = {{id:String}}", parameters={"id": event_id})
    assert len(r.result_rows) == 1, f"{table}: {len(r.result_rows)} rows for {event_id!r}"
    return dict(zip(r.column_names, r.result_rows[0]))


@FUZZ
@given(
    qid=hostile_text, eid=hostile_text, uid=hostile_text, info=hostile_text, interest=hostile_text, query=hostile_text,
    version=hostile_text, text=hostile_text, reason=hostile_text, why=hostile_text,
)
def test_hostile_text_in_every_field_is_answered_clicked_and_stored_verbatim(services, clickhouse_client, qid, eid, uid, info, interest, query, version, text, reason, why):
    q = base_query(query_id=nonblank(qid), event_id=f"{next(_unique)}{eid}", query=nonblank(query), user=UserProfile(user_id=nonblank(uid), info=nonblank(info), interests=[nonblank(interest)]))
    # the real responder answers it; the real user simulator decides on the answer
    (out,), dead = services["responder"].feed(QUERIES, json.dumps(wire(q)).encode())
    assert dead == [] and out[0] == RESPONSES
    resp = decode(out[1], ResponseEvent)
    assert (resp.query_id, resp.query, resp.user) == (q.query_id, q.query, q.user) and resp.n_ads == 1
    clicks, dead = services["user-sim"].feed(RESPONSES, out[1])
    assert dead == [] and len(clicks) == 1
    click = decode(clicks[0][1], ClickEvent)
    # fields a service writes, made hostile too: the answer, a format reason, the policy, a click's reason
    best = q.candidates.highest_bid()
    resp2 = base_response(q, text=f"{text}\n@{best.title}@[{best.ad_id}] {text}").model_copy(update={"policy_version": nonblank(version), "format_reasons": [why, ""]})
    click2 = base_click(query_id=q.query_id, user_id=q.user.user_id, policy_version=nonblank(version), reason=reason)
    events = [q, resp, click, resp2, click2]
    sink = services["sink"]
    for ev in events:
        topic = {QueryEvent: QUERIES, ResponseEvent: RESPONSES, ClickEvent: CLICKS}[type(ev)]
        assert sink.feed(topic, json.dumps(wire(ev)).encode()) == ([], [])
    ch = clickhouse_client
    assert _stored(ch, "queries", q.event_id, "query_id, user_id, query") == {"query_id": q.query_id, "user_id": q.user.user_id, "query": q.query}
    for r in (resp, resp2):
        got = _stored(ch, "responses", r.event_id, "query_id, policy_version, user_id, query, text, format_reasons")
        assert got == {"query_id": r.query_id, "policy_version": r.policy_version, "user_id": r.user.user_id, "query": r.query, "text": r.text, "format_reasons": r.format_reasons}
    for c in (click, click2):
        got = _stored(ch, "clicks", c.event_id, "query_id, policy_version, user_id, reason, bid, clicked")
        assert got == {"query_id": c.query_id, "policy_version": c.policy_version, "user_id": c.user_id, "reason": c.reason, "bid": c.bid, "clicked": c.clicked}
    # and nothing was executed: every table is still there, holding exactly what was inserted
    n = ch.query("SELECT (SELECT count() FROM llm_auction.queries FINAL), (SELECT count() FROM llm_auction.clicks FINAL)").result_rows[0]
    assert n[0] >= 1 and n[1] >= 2


def test_huge_strings_are_processed_or_dead_lettered_with_bounded_records(services, clickhouse_client):
    """A 300 KB query is answered and stored whole; a 300 KB bad record's dead letter keeps the
    first 100,000 characters and a bounded reason; a 100,000-digit ad id is refused."""
    big = "why " * 75_000
    q = base_query(query_id="fuzz.huge", query=big)
    (out,), dead = services["responder"].feed(QUERIES, json.dumps(wire(q)).encode())
    assert dead == [] and decode(out[1], ResponseEvent).query == big.strip()
    clicks, dead = services["user-sim"].feed(RESPONSES, out[1])
    assert dead == [] and len(clicks) == 1
    assert services["sink"].feed(QUERIES, json.dumps(wire(q)).encode()) == ([], [])
    assert _stored(clickhouse_client, "queries", q.event_id, "query")["query"] == big.strip()
    bad = json.dumps(wire(base_query()) | {"user": "x" * 300_000}).encode()
    for h in _readers(services, QUERIES):
        d = h.assert_dead_lettered_once(QUERIES, bad)
        assert len(d.payload) == 100_000
    huge_id = json.dumps(wire(base_click()) | {"ad_id": "Ad-" + "1" * 100_000}).encode()
    assert "ad_id" in services["sink"].assert_dead_lettered_once(CLICKS, huge_id).error


@settings(FUZZ, max_examples=12)
@given(n=st.integers(1000, 5000), mix=st.sets(st.sampled_from(["good", "unknown", "retitled", "malformed"]), min_size=1), seed=st.integers(0, 2**32 - 1))
def test_answers_with_thousands_of_markers_are_format_errors_not_crashes(services, n, mix, seed):
    q = base_query()
    shown = {c.ad_id: c.title for c in q.candidates}
    ids = list(shown)
    rng = random.Random(seed)
    kinds = [rng.choice(sorted(mix)) for _ in range(n)]
    parts = []
    for i, k in enumerate(kinds):
        a = ids[rng.randrange(len(ids))]
        parts.append({
            "good": f"@{shown[a]}@[{a}]", "unknown": f"@Some Ad@[Ad-{9000 + i % 999:04d}]",
            "retitled": f"@{shown[a]}!@[{a}]", "malformed": f"@{shown[a]}[{a}]@ @[",
        }[k])
    answer = "Here you go: " + " ".join(parts)
    echo = Harness("responder", [QUERIES], ResponderHandler(EchoBackend(), CATALOG, PolicyRouter("base")), services["responder"].tally)
    t0 = time.perf_counter()
    (out,), dead = echo.feed(QUERIES, json.dumps(wire(q.model_copy(update={"query": answer}))).encode())
    allocate_s = time.perf_counter() - t0
    assert dead == [] and allocate_s < 5.0
    resp = decode(out[1], ResponseEvent)
    assert set(resp.exposed_ad_ids) <= set(shown) and resp.n_ads <= len(shown)
    assert resp.format_error == (set(kinds) != {"good"})
    t0 = time.perf_counter()
    clicks, dead = services["user-sim"].feed(RESPONSES, out[1])
    assert dead == [] and len(clicks) == resp.n_ads and time.perf_counter() - t0 < 10.0
