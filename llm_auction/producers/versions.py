"""Announcing a published policy version on ``auction.policy-versions``: the one producer helper.

The path of a policy version reads one way: an IRPO epoch trains it, the registry publishes it
(atomically), :func:`announce` sends its ``PolicyVersion`` event once, the responders' control
follower reads it, verifies the files and loads the version. Every caller (``irpo run-epoch``,
``policy announce``, the learning loop, the trainer service) announces through here.

The registry is passed in (``trainer.registry.ModelRegistry`` or anything with its
``is_announced`` / ``mark_announced``): producers sit beside the trainer layer, not above it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from llm_auction.logs import log_event
from llm_auction.schemas import encode
from llm_auction.schemas.topics import POLICY_VERSIONS

log = logging.getLogger(__name__)


def announce(registry, manifest, producer, topic: str = POLICY_VERSIONS, timeout_s: float = 30.0, *, again: bool = False) -> bool:
    """Send ``manifest``'s ``PolicyVersion`` once: skipped when the registry records it as announced,
    unless ``again`` (for a broker that may have lost the history the record refers to: the
    embedded one keeps topics in memory, so a new process's followers never saw it).

    The event id is deterministic (``Manifest.event_id``), so a crash between the broker's ack and
    the record, or a send ``again``, re-sends an event the consumers already dedup. Returns whether
    it was sent now.
    """
    if registry.is_announced(manifest.version) and not again:
        log_event(log, "policy version already announced", version=manifest.version)
        return False
    event = manifest.to_event()
    producer.send(topic, key=manifest.version.encode(), value=encode(event)).get(timeout=timeout_s)
    producer.flush(timeout=timeout_s)
    registry.mark_announced(manifest.version, event.event_id, topic)
    log_event(log, "policy version announced", version=manifest.version, topic=topic, event_id=event.event_id)
    return True


def announcer(registry, settings, bootstrap: str | None = None) -> Callable[..., bool] | None:
    """``announce`` with a producer of its own per call, for commands that hold none; None when
    there is no broker (``bootstrap``, else ``LLMA_KAFKA_BOOTSTRAP``)."""
    bootstrap = bootstrap or settings.kafka_bootstrap
    if not bootstrap:
        return None

    def send(manifest) -> bool:
        from llm_auction.infra.kafka import ensure_topics, make_producer

        ensure_topics(settings, bootstrap)
        producer = make_producer(settings, bootstrap)
        try:
            return announce(registry, manifest, producer)
        finally:
            producer.close()

    return send


__all__ = ["announce", "announcer"]
