"""The trainer service (``llm-auction serve trainer``): run the IRPO epochs the stream app requests.

Why a process of its own: an epoch is minutes of sampling and DPO on every core. On the Faust
worker's event loop it would stall the join and the worker's heartbeats; in an executor thread of
the stream app it would still compete with the join for the cores and die with the worker. It also
needs no warehouse: the world's train split, the parent's adapter and the pCTR ONNX named by the
request are files, so the trainer never opens the chdb folder the stream app holds (chdb admits
one process per folder).

The loop. A kafka-python consumer is assigned ``auction.irpo-requests``' partition by hand (no
group membership: an epoch of many minutes without a poll would overrun ``max.poll.interval.ms``
and trigger a rebalance) and starts at the committed offset of ``LLMA_TRAINER_GROUP``, else at the
beginning. Requests are served one at a time, in order:

1. **served already?** A policy version whose manifest records the request
   (``data_window.request.request_id``, :func:`served_by`): announce it (a no-op when the registry
   records it as announced) and go on; or a served record without a version (below): go on. This
   covers a re-delivered request (a crash before the commit), a trigger sent again, and a crash
   between publication and announcement.
2. **unservable?** Undecodable, or its parent or pCTR version is not in the registry: dead-lettered
   on ``auction.dead-letter`` with the reason.
3. **run the epoch** (the ``run_epoch`` callable: :func:`~llm_auction.trainer.epoch_setup.run_configured_epoch`,
   the builder ``irpo run-epoch`` uses too), which publishes atomically; then **announce** (the
   ``announce`` callable: ``producers.versions.announce`` on ``auction.policy-versions``, once),
   from where the rollout controller canaries it like any
   other version. An epoch that forms no pair publishes nothing (logged); the same seeds would form
   none again, so the request counts as served.
4. **record** the outcome (``published``, ``no_pairs``, ``refused``) under the policy registry's
   ``.requests/<request id>.json`` (:func:`record_served`, :func:`served_record`): the stream app's
   trigger reads it to know that its last request was served before it asks for another epoch.
5. **commit** the request's offset, only now. A crash anywhere before re-runs the request, and step
   1 makes that safe. An exception in the epoch stops the service uncommitted (exit code 2): a
   restart retries the request.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_auction.logs import log_event
from llm_auction.schemas import DeadLetter, EpochRequest, SchemaError, decode, encode
from llm_auction.schemas.topics import DEAD_LETTER, IRPO_REQUESTS

from .irpo import BASE_VERSION
from .registry import Manifest, ModelRegistry

log = logging.getLogger(__name__)

RunEpoch = Callable[[EpochRequest, dict[str, Any]], Any]  # (request, data_window_extra) -> irpo.EpochResult
Announce = Callable[[Manifest], bool]  # producers.versions.announce bound to a producer: True when sent now


def request_window(request: EpochRequest) -> dict[str, Any]:
    """What the version's manifest records of the request that made it (``data_window.request``)."""
    return {
        "request_id": request.event_id, "parent_version": request.parent_version, "pctr_version": request.pctr_version,
        "impressions_total": request.impressions_total, "impressions_since_last": request.impressions_since_last,
        "requested_by": request.requested_by, "requested_at": request.ts.isoformat(),
    }


def served_by(registry: ModelRegistry, request_id: str) -> Manifest | None:
    """The policy version an earlier run of this request published, or None."""
    for m in registry.list():
        if ((m.data_window or {}).get("request") or {}).get("request_id") == request_id:
            return m
    return None


REQUESTS_DIR = ".requests"  # beside the versions, like .announced/: never inside a version folder


def _record_path(registry: ModelRegistry, request_id: str):
    return registry.dir / REQUESTS_DIR / f"{uuid.UUID(request_id)}.json"  # a uuid only: no path tricks


def record_served(registry: ModelRegistry, request: EpochRequest, outcome: str, version: str | None = None, reason: str = "") -> None:
    """Record that ``request`` was served (``outcome``: ``published``, ``no_pairs`` or ``refused``), atomically."""
    path = _record_path(registry, request.event_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"request_id": request.event_id, "parent_version": request.parent_version, "pctr_version": request.pctr_version,
           "outcome": outcome, "version": version, "reason": reason[:500], "ts": time.time()}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def served_record(registry: ModelRegistry, request_id: str) -> dict | None:
    """The record :func:`record_served` wrote for ``request_id``, or None (not served yet)."""
    try:
        return json.loads(_record_path(registry, request_id).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


@dataclass
class TrainerStats:
    requests: int = 0
    trained: list[str] = field(default_factory=list)  # versions published by this process
    already_served: list[str] = field(default_factory=list)  # request ids found served in the registry
    no_pairs: int = 0
    dead_lettered: int = 0
    announced: list[str] = field(default_factory=list)


class EpochTrainer:
    """Consume epoch requests, run each once, announce its version, then commit (module docstring)."""

    def __init__(
        self, settings, bootstrap: str, registry: ModelRegistry, run_epoch: RunEpoch, producer, announce: Announce, *,
        requests_topic: str = IRPO_REQUESTS, dead_letter_topic: str = DEAD_LETTER, group: str | None = None, name: str = "trainer",
    ):
        self.settings, self.bootstrap, self.registry, self.run_epoch, self.producer = settings, bootstrap, registry, run_epoch, producer
        self.announce = announce
        self.requests_topic, self.dead_letter_topic = requests_topic, dead_letter_topic
        self.group = group or settings.trainer_group
        self.name = name
        self.stats = TrainerStats()
        self.pctr_registry = ModelRegistry(registry.root, "pctr")

    # -- one request ---------------------------------------------------------------------------
    def problem(self, request: EpochRequest, oracle: bool = False) -> str | None:
        """Why ``request`` cannot be served (its parent or pCTR version is unknown), or None."""
        try:
            if request.parent_version != BASE_VERSION:
                self.registry.get(request.parent_version)
            if not oracle:
                self.pctr_registry.get(request.pctr_version)
        except (FileNotFoundError, ValueError) as e:
            return f"epoch request {request.event_id} cannot be served: {e}"
        return None

    def _announce(self, manifest: Manifest) -> None:
        if self.announce(manifest):
            self.stats.announced.append(manifest.version)

    def handle(self, request: EpochRequest, oracle: bool = False) -> Manifest | None:
        """Serve one request (steps 1-3 of the module docstring); returns its version, if any."""
        self.stats.requests += 1
        done = served_by(self.registry, request.event_id)
        record = served_record(self.registry, request.event_id)
        if done is not None or record is not None:
            self.stats.already_served.append(request.event_id)
            log_event(log, "trainer: request already served", service=self.name, request_id=request.event_id,
                      version=done.version if done else None, outcome=(record or {}).get("outcome", "published"))
            if done is not None:
                self._announce(done)  # a crash may have come between publication and announcement
                if record is None:
                    record_served(self.registry, request, "published", done.version)
            return done
        reason = self.problem(request, oracle)
        if reason is not None:
            self._dead_letter(encode(request), reason, key=request.parent_version)
            record_served(self.registry, request, "refused", reason=reason)
            return None
        log_event(log, "trainer: epoch starts", service=self.name, request_id=request.event_id, parent=request.parent_version, pctr_version=request.pctr_version)
        t0 = time.perf_counter()
        result = self.run_epoch(request, {"request": request_window(request)})
        manifest = getattr(result, "manifest", None)
        if manifest is None:
            self.stats.no_pairs += 1
            log_event(log, "trainer: the epoch formed no pair; nothing published", logging.WARNING, service=self.name, request_id=request.event_id)
            record_served(self.registry, request, "no_pairs")
            return None
        self.stats.trained.append(manifest.version)
        self._announce(manifest)
        record_served(self.registry, request, "published", manifest.version)
        log_event(log, "trainer: epoch served", service=self.name, request_id=request.event_id, version=manifest.version, seconds=round(time.perf_counter() - t0, 1))
        return manifest

    def _dead_letter(self, payload: bytes, reason: str, key: str | None = None, offset: int | None = None) -> None:
        self.stats.dead_lettered += 1
        log_event(log, "trainer: request dead-lettered", logging.WARNING, service=self.name, reason=reason[:300])
        dl = DeadLetter.of(payload, reason, source_topic=self.requests_topic, partition=0, offset=offset, key=key, consumer=self.name)
        self.producer.send(self.dead_letter_topic, key=(key or "").encode("utf-8"), value=encode(dl)).get(timeout=30)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, oracle: bool = False, max_requests: int | None = None, idle_exit_s: float | None = None) -> TrainerStats:
        """Serve requests until ``stop``, ``max_requests`` served, or ``idle_exit_s`` without one."""
        from kafka import OffsetAndMetadata, TopicPartition

        from llm_auction.infra.kafka import make_consumer

        consumer = make_consumer(self.settings, self.bootstrap, self.group, enable_auto_commit=False, max_poll_records=1)
        tp = TopicPartition(self.requests_topic, 0)
        try:
            consumer.assign([tp])
            committed = consumer.committed(tp)
            if committed is None:
                consumer.seek_to_beginning(tp)
            log_event(log, "trainer: following epoch requests", service=self.name, topic=self.requests_topic, group=self.group, committed=committed)
            idle_since, served = time.monotonic(), 0
            while not stop.is_set() and (max_requests is None or served < max_requests):
                polled = consumer.poll(timeout_ms=500)
                records = [r for rs in polled.values() for r in rs]
                if not records:
                    if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                        break
                    continue
                for rec in records:
                    try:
                        request = decode(rec.value, EpochRequest)
                    except SchemaError as e:
                        self._dead_letter(rec.value or b"", str(e), offset=rec.offset)
                    else:
                        self.handle(request, oracle)
                    consumer.commit({tp: OffsetAndMetadata(rec.offset + 1, "", -1)})  # after publication and announcement
                    served += 1
                idle_since = time.monotonic()
        finally:
            consumer.close()
        return self.stats


__all__ = ["EpochTrainer", "TrainerStats", "record_served", "request_window", "served_by", "served_record"]
