"""Kafka clients and admin (kafka-python 3.x): the one place a service gets a producer, a consumer
or its topics, so that every connection carries the same security settings and timeouts.

Works against any Kafka. The embedded default is Tansu (see :mod:`llm_auction.infra.broker`),
whose limits shape a few choices below and are noted where they do:

- a consumer-group join waits half the session timeout, hence the 6 s default session;
- ListOffsets(latest) can come back short for batched writes: never compute lag or "am I done"
  from ``end_offsets``; count what you consumed, or use a sentinel;
- no compaction (the broker accepts ``cleanup.policy=compact`` and ignores it);
- kafka-python's idempotent producer works (aiokafka's and transactions do not).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from llm_auction.infra.errors import InfraError
from llm_auction.logs import log_event
from llm_auction.schemas.codec import SchemaError, decode
from llm_auction.schemas.topics import TOPICS, TopicSpec

if TYPE_CHECKING:  # kafka is imported lazily: `--help` and unit tests stay fast
    from kafka import KafkaConsumer, KafkaProducer

    from llm_auction.schemas.settings import Settings

log = logging.getLogger(__name__)

# Error codes a CreateTopics answer may carry (Kafka protocol).
_OK = 0
_TOPIC_ALREADY_EXISTS = 36
# A broker that refuses a topic's config (compaction, an unknown key, a policy) answers one of
# these; we then retry with less config rather than fail the whole start-up.
_CONFIG_REJECTED = {
    40,  # INVALID_CONFIG
    42,  # INVALID_REQUEST
    44,  # POLICY_VIOLATION
    35,  # UNSUPPORTED_VERSION
}

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "batch_size": 64 * 1024,
    "retries": 5,
    "enable_idempotence": True,  # works with kafka-python on Tansu and Apache Kafka
    "max_in_flight_requests_per_connection": 5,  # the idempotence limit, keeps order per partition
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,  # services commit after the work (and its output) is done
    "auto_offset_reset": "earliest",  # a new group reads the whole topic: nothing is skipped
    "max_poll_records": 500,
}


def _servers(bootstrap: str) -> list[str]:
    return [s.strip() for s in bootstrap.split(",") if s.strip()]


def client_config(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    """Connection keys common to admin, producer and consumer, from ``settings``.

    ``bootstrap`` overrides ``settings.kafka_bootstrap`` (the local broker's address is only
    known once it runs). Only keys that apply are set: SASL keys under ``SASL_*`` protocols, the
    CA bundle under TLS, so kafka-python's own defaults hold everywhere else.
    """
    bootstrap = bootstrap or settings.kafka_bootstrap
    if not bootstrap or not _servers(bootstrap):
        raise InfraError("No Kafka bootstrap servers: set LLMA_KAFKA_BOOTSTRAP, or leave it unset and start the local broker (llm-auction broker).")
    proto = settings.kafka_security_protocol
    cfg: dict[str, Any] = {
        "bootstrap_servers": _servers(bootstrap),
        "security_protocol": proto,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
    }
    if proto.startswith("SASL_"):
        if not settings.kafka_sasl_mechanism:
            raise InfraError(f"LLMA_KAFKA_SECURITY_PROTOCOL={proto} needs LLMA_KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512).")
        cfg["sasl_mechanism"] = settings.kafka_sasl_mechanism
        if settings.kafka_sasl_username is not None:
            cfg["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            cfg["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    elif settings.kafka_sasl_mechanism or settings.kafka_sasl_username:
        log_event(log, "SASL settings ignored: the security protocol is not SASL_*", logging.WARNING, security_protocol=proto)
    if proto in ("SSL", "SASL_SSL") and settings.kafka_ssl_cafile is not None:
        cfg["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    return cfg


def unreachable(bootstrap: str, reason: str) -> InfraError:
    """The one-line error every "cannot reach the broker" path raises."""
    return InfraError(f"Kafka broker at {bootstrap} is not reachable: {reason}. Set LLMA_KAFKA_BOOTSTRAP or unset it to use the local broker.")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _tcp_probe(server: str, timeout_s: float) -> str | None:
    """Why ``host:port`` takes no TCP connection, or None when it does (a fast, precise reason)."""
    host, _, port_s = server.rpartition(":")
    host = host.strip("[]") or "localhost"
    try:
        port = int(port_s)
    except ValueError:
        return f"'{server}' is not host:port"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"cannot resolve host '{host}' ({e.strerror})"
    last = "no address"
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.settimeout(max(0.1, timeout_s))
            try:
                s.connect(addr)
                return None
            except ConnectionRefusedError:
                last = "connection refused"
            except (socket.timeout, TimeoutError):
                last = f"no answer within {timeout_s:.0f}s"
            except OSError as e:
                last = e.strerror or type(e).__name__
    return last


def check_broker(bootstrap: str, settings: Settings | None = None, timeout_s: float = 10.0) -> None:
    """Raise :class:`InfraError` (one line) unless a broker at ``bootstrap`` answers a metadata request.

    A TCP probe first gives a precise reason fast (refused, unresolvable, silent); then a real
    Kafka metadata request, with ``settings``' security keys, proves it speaks Kafka. Without
    ``settings`` the request is PLAINTEXT (how the local broker is probed).
    """
    deadline = time.monotonic() + timeout_s

    def fail(reason: str) -> InfraError:
        return unreachable(bootstrap, reason)

    servers = _servers(bootstrap)
    if not servers:
        raise fail("no host:port given")
    reasons = []
    for server in servers:
        why = _tcp_probe(server, min(5.0, max(0.1, deadline - time.monotonic())))
        if why is None:
            break
        reasons.append(f"{server}: {why}" if len(servers) > 1 else why)
    else:
        raise fail("; ".join(reasons))

    from kafka import KafkaAdminClient

    remaining_ms = max(500, int((deadline - time.monotonic()) * 1000))
    # No settings: plain loopback defaults (the local broker), not whatever LLMA_* says.
    base = client_config(settings, bootstrap) if settings is not None else {"bootstrap_servers": servers, "security_protocol": "PLAINTEXT"}
    cfg = base | {"bootstrap_timeout_ms": remaining_ms, "request_timeout_ms": remaining_ms}
    admin = None
    try:
        admin = KafkaAdminClient(**cfg)
        admin.list_topics()  # a Metadata request
    except Exception as e:  # noqa: BLE001 - any failure here means "not usable", said in one line
        raise fail(f"no Kafka answer ({_first_line(e)})") from None
    finally:
        if admin is not None:
            admin.close()


def admin_client(settings: Settings, bootstrap: str | None = None, **overrides: Any):
    """A ``KafkaAdminClient``; a broker that cannot be reached raises :class:`InfraError`."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    cfg = client_config(settings, bootstrap) | overrides
    try:
        return KafkaAdminClient(**cfg)
    except KafkaError as e:
        raise unreachable(','.join(cfg['bootstrap_servers']), _first_line(e)) from None


def _topic_request(spec: TopicSpec, configs: dict[str, str]) -> dict[str, Any]:
    # replication_factor -1: the broker's default (Tansu: 1; a real cluster: its own policy).
    return {"num_partitions": spec.partitions, "replication_factor": -1, "configs": configs}


CreateFn = Callable[[dict[str, dict[str, Any]]], dict[str, tuple[int, str | None]]]


def create_with_fallback(create: CreateFn, specs: Iterable[TopicSpec]) -> list[str]:
    """Create ``specs`` through ``create`` (name -> request, answering name -> (code, message)).

    Already-existing topics count as done. A topic whose config the broker rejects is retried
    first without ``cleanup.policy`` (compaction is what brokers like Tansu lack), then with no
    config at all, with a warning each time: a topic with default retention beats no topic.
    Returns the names this call created. Split from :func:`ensure_topics` so the fallback can be
    tested against answers no local broker gives.
    """
    created: list[str] = []
    pending = {s.name: (s, s.config()) for s in specs}
    for attempt in range(3):
        if not pending:
            break
        answers = create({name: _topic_request(spec, cfg) for name, (spec, cfg) in pending.items()})
        retry: dict[str, tuple[TopicSpec, dict[str, str]]] = {}
        for name, (spec, cfg) in pending.items():
            code, message = answers.get(name, (-1, "no answer for this topic"))
            if code == _OK:
                created.append(name)
            elif code == _TOPIC_ALREADY_EXISTS:
                continue
            elif code in _CONFIG_REJECTED and cfg and attempt < 2:
                smaller = {k: v for k, v in cfg.items() if k != "cleanup.policy"} if "cleanup.policy" in cfg else {}
                log_event(log, "broker rejected topic config; retrying with less", logging.WARNING, topic=name, rejected=cfg, retry_with=smaller, error_code=code, error=message)
                retry[name] = (spec, smaller)
            else:
                raise InfraError(f"Cannot create Kafka topic {name}: error {code} ({message or 'no message'}).")
        pending = retry
    return created


def ensure_topics(settings: Settings, bootstrap: str | None = None, specs: Iterable[TopicSpec] | None = None) -> list[str]:
    """Create the project's topics (default: every ``schemas.topics.TOPICS``) if missing.

    Idempotent: existing topics are left alone (a partition count that differs from the spec is
    logged, never altered: repartitioning moves keys). Returns the names created by this call.
    """
    specs = list(TOPICS.values() if specs is None else specs)
    admin = admin_client(settings, bootstrap)
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]

        def create(requests: dict[str, dict[str, Any]]) -> dict[str, tuple[int, str | None]]:
            resp = admin.create_topics(requests, raise_errors=False)
            return {t["name"]: (t["error_code"], t.get("error_message")) for t in resp["topics"]}

        created = create_with_fallback(create, missing) if missing else []
        if created:
            admin.wait_for_topics(created)
        present = [s for s in specs if s.name in existing]
        if present:
            _warn_partition_mismatch(admin, present)
    finally:
        admin.close()
    log_event(log, "kafka topics ensured", created=created, total=len(specs))
    return created


def _warn_partition_mismatch(admin, specs: list[TopicSpec]) -> None:
    by_name = {s.name: s for s in specs}
    for t in admin.describe_topics(list(by_name)):
        want = by_name[t["name"]].partitions
        have = len(t.get("partitions") or [])
        if have != want:
            log_event(log, "existing topic has a different partition count than its spec", logging.WARNING, topic=t["name"], partitions=have, spec=want)


def topic_partitions(settings: Settings, bootstrap: str | None, topics: Iterable[str]) -> dict[str, int]:
    """Partition count per topic, as the broker's metadata reports it."""
    admin = admin_client(settings, bootstrap)
    try:
        return {t["name"]: len(t.get("partitions") or []) for t in admin.describe_topics(list(topics))}
    finally:
        admin.close()


def producer_config(settings: Settings, bootstrap: str | None = None, **overrides: Any) -> dict[str, Any]:
    """What :func:`make_producer` passes to ``KafkaProducer`` (without the key serializer)."""
    return client_config(settings, bootstrap) | PRODUCER_DEFAULTS | {"linger_ms": settings.kafka_linger_ms, "metrics_enabled": settings.kafka_client_metrics} | overrides


def consumer_config(settings: Settings, bootstrap: str | None, group_id: str | None, **overrides: Any) -> dict[str, Any]:
    """What :func:`make_consumer` passes to ``KafkaConsumer``."""
    session = settings.kafka_session_timeout_ms
    return (
        client_config(settings, bootstrap)
        | CONSUMER_DEFAULTS
        | {
            "group_id": group_id, "session_timeout_ms": session, "heartbeat_interval_ms": max(100, session // 3),
            "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms, "metrics_enabled": settings.kafka_client_metrics,
        }
        | overrides
    )


def make_producer(settings: Settings, bootstrap: str | None = None, **overrides: Any) -> KafkaProducer:
    """A producer of bytes values with ``str`` (utf-8) or bytes keys: ``acks=all``, idempotent, linger from settings.

    Callers encode values themselves (``schemas.codec.encode``). The key is the ``query_id`` for
    per-query topics, so one query's events share a partition. ``overrides`` win.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    from kafka.serializer import DefaultSerializer

    # Keys: str -> utf-8, bytes and None as they are. Values: no serializer, bytes go as they are.
    cfg = {"key_serializer": DefaultSerializer("utf-8")} | producer_config(settings, bootstrap, **overrides)
    try:
        return KafkaProducer(**cfg)
    except KafkaError as e:
        raise unreachable(",".join(cfg["bootstrap_servers"]), _first_line(e)) from None


def make_consumer(settings: Settings, bootstrap: str | None, group_id: str | None, topics: Iterable[str] | str = (), **overrides: Any) -> KafkaConsumer:
    """A consumer of raw bytes keys and values in group ``group_id``, subscribed to ``topics``.

    Auto-commit is off: commit after the work is done (at-least-once; downstream dedups on
    ``event_id``). New groups start at the earliest offset. ``session_timeout_ms`` comes from
    settings (6000 by default, because Tansu makes a join wait half of it), with heartbeats at a
    third of it. Pass no topics to ``assign()`` partitions by hand. ``overrides`` win (e.g.
    ``max_poll_records``, default 500). For lag or "caught up", count consumed records or use a
    sentinel: ``end_offsets`` can be short on Tansu.
    """
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    cfg = consumer_config(settings, bootstrap, group_id, **overrides)
    topic_list = [topics] if isinstance(topics, str) else list(topics)
    try:
        return KafkaConsumer(*topic_list, **cfg)
    except KafkaError as e:
        raise unreachable(",".join(cfg["bootstrap_servers"]), _first_line(e)) from None


def open_reader(settings: Settings, bootstrap: str | None, topics: Iterable[str], **overrides: Any) -> KafkaConsumer:
    """A group-less consumer assigned every partition of ``topics``, at their beginning; it commits nothing.

    For reading topics whole: the control topics' state at start (the local broker keeps no
    compacted topics), and tests and benchmarks that count what a topic holds. A topic whose
    partitions the broker does not list yet is read as partition 0 (the control topics have one).
    """
    from kafka import TopicPartition

    consumer = make_consumer(settings, bootstrap, None, **overrides)
    parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or {0})]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    return consumer


def read_topics(consumer: KafkaConsumer, topics: dict[str, type]) -> list:
    """What an :func:`open_reader` consumer holds now, decoded: polls until two polls in a row find
    nothing; events in topic order, each decoded as ``topics[its topic]`` (undecodable ones skipped, logged)."""
    out, empty = [], 0
    while empty < 2:
        polled = consumer.poll(timeout_ms=300)
        empty = 0 if polled else empty + 1
        for tp in sorted(polled, key=lambda tp: (tp.topic, tp.partition)):
            for rec in polled[tp]:
                try:
                    out.append(decode(rec.value, topics[rec.topic]))
                except SchemaError as e:
                    log_event(log, "skipped an undecodable control event", logging.WARNING, topic=rec.topic, offset=rec.offset, error=str(e)[:300])
    return out
