"""Pytest plugin: a real Kafka broker for the session, chosen in this order:

1. ``LLMA_KAFKA_BOOTSTRAP`` if set (a running cluster; checked, never started);
2. testcontainers' Kafka (KRaft) when a Docker engine answers within a second or two;
3. the embedded Tansu broker (``llm_auction.infra.broker.LocalBroker``), the default here.

The broker starts on first use, so a run with no Kafka test starts none. Tests get isolation
from ``fresh_topic`` (unique names) and unique group ids, not from separate brokers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from docker_probe import docker_answers

from llm_auction.schemas.settings import Settings

_choice: dict[str, str] = {}


def _backend() -> str:
    """Decide once per session which backend serves ``kafka_bootstrap`` (cheap; starts nothing)."""
    if "backend" not in _choice:
        if os.environ.get("LLMA_KAFKA_BOOTSTRAP"):
            _choice["backend"] = "env"
        elif docker_answers():
            _choice["backend"] = "testcontainers"
        else:
            from llm_auction.infra.broker import free_port

            _choice["backend"] = "tansu"
            # Reserve the address now so the header can name it; the broker starts on first use.
            _choice["port"] = str(free_port())
    return _choice["backend"]


def pytest_report_header(config) -> str:
    backend = _backend()
    if backend == "env":
        return f"kafka backend: env LLMA_KAFKA_BOOTSTRAP ({os.environ['LLMA_KAFKA_BOOTSTRAP']})"
    if backend == "testcontainers":
        return "kafka backend: testcontainers (Apache Kafka, KRaft; started on first use)"
    return f"kafka backend: tansu (127.0.0.1:{_choice['port']}; started on first use)"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A bootstrap string for a real broker that lives for the whole session."""
    from llm_auction.infra.errors import InfraError

    backend = _backend()
    if backend == "env":
        from llm_auction.infra.kafka import check_broker

        bootstrap = os.environ["LLMA_KAFKA_BOOTSTRAP"]
        check_broker(bootstrap, Settings(kafka_bootstrap=bootstrap))
        yield bootstrap
    elif backend == "testcontainers":
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.9
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
    else:
        from llm_auction.infra.broker import LocalBroker

        broker = LocalBroker(port=int(_choice["port"]))
        try:
            broker.start()
        except InfraError:
            broker = LocalBroker().start()  # the reserved port was taken meanwhile: any free one
        try:
            yield broker.bootstrap
        finally:
            broker.stop()


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> Settings:
    """Settings pointing at the session broker (other fields from defaults and ``LLMA_*``)."""
    return Settings(kafka_bootstrap=kafka_bootstrap)


@pytest.fixture
def fresh_topic(kafka_settings: Settings, kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: ``fresh_topic(prefix="t", partitions=3)`` creates a uniquely named topic and returns
    its name, so tests sharing the session broker never read each other's messages. The topics
    are deleted afterwards (best effort; the memory broker forgets them anyway)."""
    from llm_auction.infra.kafka import admin_client, ensure_topics
    from llm_auction.schemas.topics import DAY_MS, TopicSpec

    made: list[str] = []

    def make(prefix: str = "t", partitions: int = 3, retention_ms: int = DAY_MS, compacted: bool = False) -> str:
        name = f"test.{prefix}.{uuid.uuid4().hex[:10]}"
        ensure_topics(kafka_settings, kafka_bootstrap, [TopicSpec(name, partitions, retention_ms, compacted)])
        made.append(name)
        return name

    yield make
    if made:
        admin = admin_client(kafka_settings, kafka_bootstrap)
        try:
            admin.delete_topics(made)
        except Exception:  # noqa: BLE001 - cleanup must not fail a test
            pass
        finally:
            admin.close()


@pytest.fixture
def fresh_group() -> Callable[..., str]:
    """Factory: ``fresh_group(prefix="g")`` gives a consumer-group id no other test uses."""
    return lambda prefix="g": f"test.{prefix}.{uuid.uuid4().hex[:10]}"
