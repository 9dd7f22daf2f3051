"""Kafka client configuration and failure messages: no broker needed."""

from __future__ import annotations

import socket
import time

import pytest

from llm_auction.infra.errors import InfraError
from llm_auction.infra.kafka import (
    CONSUMER_DEFAULTS,
    PRODUCER_DEFAULTS,
    check_broker,
    client_config,
    consumer_config,
    create_with_fallback,
    make_consumer,
    producer_config,
)
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import DAY_MS, TopicSpec


def _settings(**kw) -> Settings:
    base = dict(kafka_bootstrap="k1:9092, k2:9093", kafka_security_protocol="PLAINTEXT", kafka_sasl_mechanism=None, kafka_sasl_username=None, kafka_sasl_password=None, kafka_ssl_cafile=None)
    return Settings(**(base | kw))


def test_plaintext_sets_only_the_basic_keys():
    cfg = client_config(_settings(kafka_request_timeout_ms=12000))
    assert cfg == {"bootstrap_servers": ["k1:9092", "k2:9093"], "security_protocol": "PLAINTEXT", "request_timeout_ms": 12000}


def test_sasl_ssl_passes_mechanism_credentials_and_ca_through(tmp_path):
    ca = tmp_path / "ca.pem"
    cfg = client_config(
        _settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="svc", kafka_sasl_password="s3cret", kafka_ssl_cafile=ca),
        bootstrap="broker.example:9096",
    )
    assert cfg == {
        "bootstrap_servers": ["broker.example:9096"],
        "security_protocol": "SASL_SSL",
        "request_timeout_ms": 15000,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "s3cret",
        "ssl_cafile": str(ca),
    }


def test_ssl_without_sasl_sets_the_ca_only(tmp_path):
    cfg = client_config(_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "ca.pem"))
    assert cfg["ssl_cafile"] == str(tmp_path / "ca.pem")
    assert not any(k.startswith("sasl_") for k in cfg)


def test_sasl_without_mechanism_is_one_clear_error():
    with pytest.raises(InfraError, match="LLMA_KAFKA_SASL_MECHANISM") as e:
        client_config(_settings(kafka_security_protocol="SASL_PLAINTEXT"))
    assert "\n" not in str(e.value)


def test_no_bootstrap_is_one_clear_error():
    with pytest.raises(InfraError, match="LLMA_KAFKA_BOOTSTRAP"):
        client_config(_settings(kafka_bootstrap=None))


def test_every_key_is_one_kafka_python_knows():
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    cfg = client_config(_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN", kafka_sasl_username="u", kafka_sasl_password="p", kafka_ssl_cafile="/ca.pem"))
    for cls in (KafkaAdminClient, KafkaProducer, KafkaConsumer):
        assert set(cfg) <= set(cls.DEFAULT_CONFIG), cls.__name__
    assert set(PRODUCER_DEFAULTS) <= set(KafkaProducer.DEFAULT_CONFIG)
    assert set(CONSUMER_DEFAULTS) <= set(KafkaConsumer.DEFAULT_CONFIG)
    assert PRODUCER_DEFAULTS["acks"] == "all"
    assert CONSUMER_DEFAULTS["enable_auto_commit"] is False and CONSUMER_DEFAULTS["auto_offset_reset"] == "earliest"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["refused", "unresolvable"])
def test_check_broker_fails_fast_with_one_line(where):
    bootstrap = f"127.0.0.1:{_closed_port()}" if where == "refused" else "no-such-host.invalid:9092"
    t0 = time.monotonic()
    with pytest.raises(InfraError) as e:
        check_broker(bootstrap, timeout_s=10)
    took = time.monotonic() - t0
    msg = str(e.value)
    assert took < 12
    assert "\n" not in msg
    assert msg.startswith(f"Kafka broker at {bootstrap} is not reachable: ")
    assert ("connection refused" if where == "refused" else "cannot resolve host 'no-such-host.invalid'") in msg
    assert msg.endswith("Set LLMA_KAFKA_BOOTSTRAP or unset it to use the local broker.")


def test_check_broker_on_a_socket_that_is_not_kafka_times_out_in_time():
    # Something accepts TCP but never speaks Kafka: the metadata request must give up in time.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        bootstrap = f"127.0.0.1:{srv.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(InfraError, match="no Kafka answer") as e:
            check_broker(bootstrap, timeout_s=2)
        assert time.monotonic() - t0 < 6
        assert "\n" not in str(e.value)


def test_consumer_config_follows_settings_and_overrides():
    cfg = consumer_config(_settings(kafka_session_timeout_ms=9000), None, "grp", max_poll_records=50)
    assert cfg["group_id"] == "grp"
    assert cfg["session_timeout_ms"] == 9000 and cfg["heartbeat_interval_ms"] == 3000
    assert cfg["enable_auto_commit"] is False and cfg["auto_offset_reset"] == "earliest"
    assert cfg["max_poll_records"] == 50
    assert consumer_config(_settings(), None, "g")["session_timeout_ms"] == 6000  # the Tansu-friendly default
    assert consumer_config(_settings(), None, "g")["max_poll_records"] == 500
    # the fetch wait bounds a caught-up consumer's delay (kafka-python's own default is 500 ms)
    assert consumer_config(_settings(), None, "g")["fetch_max_wait_ms"] == 100
    assert consumer_config(_settings(kafka_fetch_max_wait_ms=10), None, "g")["fetch_max_wait_ms"] == 10
    assert consumer_config(_settings(kafka_fetch_max_wait_ms=10), None, "g", fetch_max_wait_ms=7)["fetch_max_wait_ms"] == 7


def test_producer_config_is_acks_all_idempotent_and_overridable():
    cfg = producer_config(_settings(), None, retries=2)
    assert cfg["acks"] == "all" and cfg["enable_idempotence"] is True and cfg["retries"] == 2
    assert cfg["linger_ms"] == 0 and cfg["bootstrap_servers"] == ["k1:9092", "k2:9093"]  # the setting's default
    assert producer_config(_settings(kafka_linger_ms=5), None)["linger_ms"] == 5
    assert producer_config(_settings(kafka_linger_ms=5), None, linger_ms=1)["linger_ms"] == 1  # overrides win


def test_client_metrics_are_off_unless_asked_for():
    # kafka-python records sensors on every fetch and record; nothing here reads them
    for cfg in (producer_config(_settings(), None), consumer_config(_settings(), None, "g")):
        assert cfg["metrics_enabled"] is False
    on = _settings(kafka_client_metrics=True)
    assert producer_config(on, None)["metrics_enabled"] is True and consumer_config(on, None, "g")["metrics_enabled"] is True


def test_make_consumer_on_a_refused_port_is_an_infra_error():
    s = _settings(kafka_bootstrap=f"127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    with pytest.raises(InfraError, match="not reachable") as e:
        make_consumer(s, None, "g", ["t"], bootstrap_timeout_ms=500)
    assert time.monotonic() - t0 < 5 and "\n" not in str(e.value)


# create_with_fallback: answers from a broker that rejects configs (Tansu accepts everything, so
# these answers are scripted; the real-broker path is covered in tests/integration/test_kafka.py).


def _scripted(reject: set[str], exists: set[str] = frozenset()):
    calls: list[dict] = []

    def create(requests):
        calls.append(requests)
        out = {}
        for name, req in requests.items():
            if name in exists:
                out[name] = (36, "Topic with this name already exists.")
            elif reject & set(req["configs"]):
                out[name] = (40, "Unsupported config")
            else:
                out[name] = (0, None)
        return out

    return create, calls


def test_rejected_compaction_is_retried_without_it():
    create, calls = _scripted(reject={"cleanup.policy"})
    specs = [TopicSpec("v", 1, -1, compacted=True), TopicSpec("q", 6, DAY_MS)]
    assert sorted(create_with_fallback(create, specs)) == ["q", "v"]
    assert calls[0]["v"]["configs"] == {"retention.ms": "-1", "cleanup.policy": "compact"}
    assert calls[1] == {"v": {"num_partitions": 1, "replication_factor": -1, "configs": {"retention.ms": "-1"}}}


def test_rejected_config_falls_back_to_none_then_gives_up_with_one_line():
    create, calls = _scripted(reject={"retention.ms"})
    assert create_with_fallback(create, [TopicSpec("v", 1, -1, compacted=True)]) == ["v"]
    assert [c["v"]["configs"] for c in calls] == [{"retention.ms": "-1", "cleanup.policy": "compact"}, {"retention.ms": "-1"}, {}]

    def always_fails(requests):
        return {n: (29, "Topic authorization failed.") for n in requests}

    with pytest.raises(InfraError, match=r"Cannot create Kafka topic v: error 29") as e:
        create_with_fallback(always_fails, [TopicSpec("v", 1, -1)])
    assert "\n" not in str(e.value)


def test_existing_topics_are_not_reported_as_created():
    create, _ = _scripted(reject=set(), exists={"q"})
    assert create_with_fallback(create, [TopicSpec("q", 6, DAY_MS), TopicSpec("r", 6, DAY_MS)]) == ["r"]
