"""A responder follows the control topics: policy versions to load, rollouts to route by.

:class:`ControlFollower` runs one :class:`~llm_auction.infra.follow.TopicFollower` (a thread with
its own group-less consumer: every responder reads everything) that reads
``auction.policy-versions`` and ``auction.rollout`` from the beginning at start (the local broker
keeps no compacted topics, so the whole history is the state) and then follows them. The thread
only reads, decodes and verifies; what changes the responder (loading weights into the backend,
changing the routing) happens in the responder's own thread, in
:meth:`ControlFollower.apply_pending`, which the responder calls before each batch. So a batch is
routed by one state, and the backend is never asked to load while it generates.

Policy versions. Before a version is loaded every file of its folder is checked against the
manifest's sha256s and the folder hash against the announced ``sha256``
(:func:`llm_auction.infra.artifacts.verify_folder`). A mismatch (or a load that fails) refuses
the version: one warning log line and a ``DeadLetter`` on ``auction.dead-letter`` with the reason;
the router does not change, so the current versions keep serving. A verified version is
hot-loaded with ``backend.load_policy(version, uri, kind)``. A version is identified by name and
hash: an event repeating both is a no-op.

Rollouts. The latest rollout event is the desired routing. It applies as soon as every version it
routes to (the stable one, and the candidate when its share is positive) is loaded. Until then
the responder keeps the routing it has and the rollout **waits** (logged once): on a fresh start
the rollout topic may be read before the version it names, and the version arrives moments
later. An arm that is a mechanism (``mosaic:20``, ``policy:<v>``) needs the versions it samples
(``llm_auction.mechanisms.arm_versions``); one that cannot be built (``mosaic`` without a served
pCTR) refuses the rollout. A rollout that routes to a version that was refused is **refused** (logged, not
dead-lettered: the event itself is sound) and the current routing stays; a later rollout
replaces it either way.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from llm_auction.infra.artifacts import ArtifactMismatch, verify_folder
from llm_auction.infra.follow import TopicFollower
from llm_auction.logs import log_event
from llm_auction.mechanisms import arm_versions
from llm_auction.schemas import DeadLetter, PolicyVersion, RolloutEvent, SchemaError, decode, encode
from llm_auction.schemas.topics import DEAD_LETTER, POLICY_VERSIONS, ROLLOUT

from .routing import PolicyRouter, Routing

log = logging.getLogger(__name__)


class ControlFollower:
    """Reads the control topics in a thread; :meth:`apply_pending` applies them in the caller's."""

    def __init__(
        self, settings, bootstrap: str, backend, router: PolicyRouter, producer=None, *,
        policy_topic: str = POLICY_VERSIONS, rollout_topic: str = ROLLOUT, dead_letter_topic: str = DEAD_LETTER,
        name: str = "responder", poll_timeout_ms: int = 200,
    ):
        self.backend, self.router, self.producer = backend, router, producer
        self.base_version = getattr(settings, "policy_version", "base")  # the name the base model serves under (models.backends.open_backend)
        self.arm_problem: Callable[[str], str | None] = lambda arm: None  # the responder's Arms.problem (consumers.build)
        self.topics = {policy_topic: PolicyVersion, rollout_topic: RolloutEvent}
        self.dead_letter_topic, self.name = dead_letter_topic, name
        self.loaded: dict[str, str | None] = {v: None for v in {router.stable, *getattr(backend, "versions", ())}}
        self.refused: dict[str, str] = {}  # version -> reason
        self.desired: RolloutEvent | None = None
        self._waiting_logged: str | None = None
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._seen_versions: dict[str, str | None] = {}  # the follower thread's: version -> sha256 queued
        self.rollouts_read: set[str] = set()  # event ids of the rollout events read (see wait_read)
        self.versions_read: set[str] = set()  # policy versions read and queued for the responder (see wait_version_read)
        # policy versions first in a poll: a rollout read with its version finds it queued
        self.follower = TopicFollower(settings, bootstrap, list(self.topics), self._read, name=f"{name}-control", poll_timeout_ms=poll_timeout_ms)

    # -- the follower thread -------------------------------------------------------------------
    @property
    def caught_up(self) -> threading.Event:
        """Set once a poll found nothing more to read."""
        return self.follower.caught_up

    @property
    def error(self) -> BaseException | None:
        """What stopped the follower thread, if anything did."""
        return self.follower.error

    def start(self) -> "ControlFollower":
        self.follower.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.follower.stop(timeout_s)

    def __enter__(self) -> "ControlFollower":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _read(self, rec) -> None:
        model = self.topics[rec.topic]
        try:
            event = decode(rec.value, model)
        except SchemaError as e:
            self._dead_letter(rec.topic, rec, str(e), getattr(rec, "value", b""))
            return
        if isinstance(event, RolloutEvent):
            self._inbox.put(("rollout", event))
            self.rollouts_read.add(event.event_id)
            return
        if self._seen_versions.get(event.version, "-") == event.sha256:
            self.versions_read.add(event.version)
            return  # the same version announced again (a retried announcement): nothing new
        self._seen_versions[event.version] = event.sha256
        try:
            verify_folder(event.uri, event.sha256)
        except ArtifactMismatch as e:
            self._inbox.put(("refused", (event, f"policy version {event.version} refused: {e}")))
        else:
            self._inbox.put(("verified", event))
        self.versions_read.add(event.version)

    def wait_read(self, rollout_event_id: str, timeout_s: float = 30.0) -> bool:
        """Wait until the follower read the rollout event ``rollout_event_id`` (it applies at the
        responder's next batch); False on timeout. For a caller that just sent a decision and is
        about to send traffic that the decision should route (``llm-auction loop``)."""
        return self.follower.wait_until(lambda: rollout_event_id in self.rollouts_read, timeout_s)

    def wait_version_read(self, version: str, timeout_s: float = 60.0) -> bool:
        """Wait until the follower read (and verified or refused) an announcement of ``version``;
        False on timeout. A caller that announces a version and then routes to it sends the rollout
        after this, so the responder loads the version before it applies the routing: the inbox is
        in reading order, and a rollout read first would wait for the version while a batch goes
        to the old routing."""
        return self.follower.wait_until(lambda: version in self.versions_read, timeout_s)

    # -- the responder's thread ----------------------------------------------------------------
    def apply_pending(self) -> None:
        """Load verified versions and apply the latest applicable rollout; call between batches."""
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "verified":
                self._load(item)
            elif kind == "refused":
                event, reason = item
                self._refuse(event, reason)
            else:
                self.desired = item
                self._waiting_logged = None
        self._route()

    def _load(self, event: PolicyVersion) -> None:
        try:
            self.backend.load_policy(event.version, event.uri, kind=event.kind)
        except Exception as e:  # noqa: BLE001 - a version that does not load is refused like a bad one
            self._refuse(event, f"policy version {event.version} refused: load failed ({type(e).__name__}: {e})"[:2000])
            return
        self.loaded[event.version] = event.sha256
        self.refused.pop(event.version, None)
        log_event(log, "policy version verified and loaded", service=self.name, version=event.version, kind=event.kind, sha256=event.sha256)

    def _refuse(self, event: PolicyVersion, reason: str) -> None:
        self.refused[event.version] = reason
        log_event(log, "policy version refused; the current versions keep serving", logging.WARNING, service=self.name, version=event.version, reason=reason[:500])
        self._dead_letter(next(iter(self.topics)), None, reason, encode(event), key=event.version)

    def _route(self) -> None:
        event = self.desired
        if event is None:
            return
        want: Routing = PolicyRouter.routing_of(event)
        if want == self.router.state:
            return
        needed = set().union(*(arm_versions(a, self.base_version) for a in want.serving()))  # a mechanism arm needs its versions
        missing = sorted(v for v in needed if v not in self.loaded)
        unservable = {a: why for a in want.serving() if (why := self.arm_problem(a))}
        if unservable:
            if self._waiting_logged != f"{event.event_id}/unservable":
                self._waiting_logged = f"{event.event_id}/unservable"
                log_event(log, "rollout refused: an arm cannot be served; the current routing stays", logging.WARNING, service=self.name, event_id=event.event_id, arms=unservable)
            return
        if not missing:
            self.router.state = want
            log_event(log, "routing changed", service=self.name, stable=want.stable, candidate=want.candidate, share=want.share, state=event.state, event_id=event.event_id)
            return
        refused = [v for v in missing if v in self.refused]
        note = ("refused", refused) if refused else ("waiting", missing)
        if self._waiting_logged != f"{event.event_id}/{note}":
            self._waiting_logged = f"{event.event_id}/{note}"
            if refused:
                log_event(log, "rollout refused: it routes to a refused version; the current routing stays", logging.WARNING, service=self.name, event_id=event.event_id, versions=refused)
            else:
                log_event(log, "rollout waits until its versions are loaded", service=self.name, event_id=event.event_id, versions=missing)

    def _dead_letter(self, topic: str, rec, reason: str, payload: bytes, key: str | None = None) -> None:
        if self.producer is None:
            return
        dl = DeadLetter.of(
            payload, reason, source_topic=topic, partition=getattr(rec, "partition", None), offset=getattr(rec, "offset", None),
            key=rec.key if rec is not None else key, consumer=self.name,
        )
        self.producer.send(self.dead_letter_topic, key=(dl.key or "").encode("utf-8"), value=encode(dl))
        self.producer.flush(timeout=10)


__all__ = ["ControlFollower"]
