"""The IRPO trigger (timer ``irpo-trigger``, on the leader): ask the trainer service for an epoch.

Paper Algorithm 1 runs epoch t after pCTR was refitted on the clicks policy t-1 earned. The stream
app is where both facts meet (it joins the impressions and promotes pCTR versions), so it decides
*when*; the epoch itself is minutes of sampling and DPO on every core and runs in the trainer
service (``llm-auction serve trainer``, ``trainer/service.py``), never on the Faust worker's event
loop. The app only sends an :class:`~llm_auction.schemas.EpochRequest` on ``auction.irpo-requests``;
the version the trainer publishes is announced on ``auction.policy-versions`` and enters through
the rollout controller like any other.

The rule, :func:`decide` (pure; settings ``LLMA_IRPO_TRIGGER_*``), every
``LLMA_PCTR_RETRAIN_INTERVAL_S``:

- a promoted pCTR version exists that no earlier request named (a promotion since the last epoch);
- the last request was served: the trainer service recorded its outcome in the policy registry
  (``.requests/<id>.json``, ``trainer/service.served_record``; a version published, no pair
  formed, or refused), so epochs never queue up behind a long one;
- no canary is running (a candidate is being measured: the next epoch waits for its decision,
  which may change the stable policy);
- at least ``LLMA_IRPO_TRIGGER_IMPRESSIONS`` impressions of the stable policy arrived since the
  last request whose parent was that policy (its ``impressions_total``, the watermark; 0 if none).

Then it requests (stable policy, latest promoted pCTR version). A request's id is derived from that
pair, so the same trigger sent twice is one request (the trainer serves it once).

State, rebuilt at start. The stable policy and a running canary come from ``auction.rollout``
(the latest event; none: ``LLMA_POLICY_VERSION``), what was asked before from
``auction.irpo-requests`` itself: a group-less kafka-python consumer reads both from the beginning
on the trigger's own thread, then follows them. The request topic is the memory across restarts:
a request counts as made once the broker acknowledged it, with no second write (a table row) that
a crash could separate from the send. The impression counts are ``stream_impressions`` FINAL, per
policy version (:meth:`StreamStore.count_impressions_of`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from llm_auction.logs import log_event
from llm_auction.schemas import EpochRequest, RolloutEvent, encode
from llm_auction.stream_app.context import StreamContext
from llm_auction.stream_app.timers import register_leader_timer

log = logging.getLogger("llm_auction.stream_app")


@dataclass(frozen=True)
class TriggerDecision:
    """``request`` to send (None: wait), why, and the stable policy's impressions since its last request."""

    request: EpochRequest | None
    reason: str
    since: int = 0


def decide(
    *, stable: str, canary: str | None, pctr_version: str | None, impressions: int, requests: Sequence[EpochRequest], min_impressions: int,
    pending: str | None = None, requested_by: str = "",
) -> TriggerDecision:
    """Whether to request an epoch of ``stable`` scored by ``pctr_version`` (see the module docstring).

    ``canary``: the candidate of a running canary, else None; ``impressions``: the stable policy's
    impressions so far; ``requests``: every request made before, in order; ``pending``: the id of
    the last request when the trainer has not served it yet, else None.
    """
    last = max((r.impressions_total for r in requests if r.parent_version == stable), default=0)
    since = max(0, impressions - last)
    if pctr_version is None:
        return TriggerDecision(None, "no promoted pCTR version yet", since)
    if pending is not None:
        return TriggerDecision(None, f"epoch request {pending} is not served yet: the next one waits for it", since)
    if canary is not None:
        return TriggerDecision(None, f"a canary of {canary} is running: the next epoch waits for its decision", since)
    if any(r.pctr_version == pctr_version for r in requests):
        return TriggerDecision(None, f"pCTR version {pctr_version} was used by an earlier request: waiting for a newer promoted one", since)
    if since < min_impressions:
        return TriggerDecision(None, f"{since} of {min_impressions} impressions of {stable} since its last request", since)
    req = EpochRequest.new(stable, pctr_version, impressions_total=impressions, impressions_since_last=since, requested_by=requested_by)
    return TriggerDecision(req, f"{since} impressions of {stable} and pCTR version {pctr_version}: epoch requested", since)


@dataclass
class TriggerState:
    """The trigger's view of the control topics, kept on its own thread (the consumer is not thread-safe)."""

    settings: Any
    bootstrap: str
    pctr_registry: Any
    rollout_topic: str
    requests_topic: str
    requests_out: Any = None  # the Faust topic requests are sent to
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="irpo-trigger"))
    consumer: Any = None
    latest_rollout: RolloutEvent | None = None
    requests: dict[str, EpochRequest] = field(default_factory=dict)  # by request id, in the order made
    last_reason: str = ""
    running: bool = False

    def follow(self) -> None:
        """Read what is new on the rollout and request topics (from the beginning the first time)."""
        from llm_auction.infra.kafka import open_reader, read_topics

        if self.consumer is None:
            self.consumer = open_reader(self.settings, self.bootstrap, [self.rollout_topic, self.requests_topic])
        for e in read_topics(self.consumer, {self.rollout_topic: RolloutEvent, self.requests_topic: EpochRequest}):
            if isinstance(e, RolloutEvent):
                self.latest_rollout = e
            else:
                self.requests.setdefault(e.event_id, e)

    def routing(self) -> tuple[str, str | None]:
        """(stable version, running canary's candidate or None)."""
        e = self.latest_rollout
        if e is None:
            return self.settings.policy_version, None
        canary = e.candidate_version if e.state in ("canary", "paused") and e.candidate_share > 0 else None
        return e.stable_version, canary

    def latest_pctr(self) -> str | None:
        m = self.pctr_registry.latest()  # promoted versions only
        return m.version if m is not None else None

    def pending(self) -> str | None:
        """The last request's id while the trainer has not recorded it served, else None."""
        from llm_auction.trainer.registry import ModelRegistry
        from llm_auction.trainer.service import served_record

        if not self.requests:
            return None
        last = next(reversed(self.requests.values()))
        return None if served_record(ModelRegistry(self.pctr_registry.root, "policy"), last.event_id) else last.event_id

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


async def maybe_request(ctx: StreamContext, state: TriggerState) -> EpochRequest | None:
    """One look: follow the topics, apply :func:`decide`, send the request (acknowledged) if any."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(state.pool, state.follow)
    pctr = await loop.run_in_executor(state.pool, state.latest_pctr)
    pending = await loop.run_in_executor(state.pool, state.pending)
    stable, canary = state.routing()
    impressions = await ctx.io(ctx.store.count_impressions_of, stable)
    d = decide(
        stable=stable, canary=canary, pctr_version=pctr, impressions=impressions, requests=list(state.requests.values()),
        min_impressions=ctx.settings.irpo_trigger_impressions, pending=pending, requested_by=ctx.app_id,
    )
    if d.request is None:
        if d.reason != state.last_reason:  # logged when it changes, not every tick
            state.last_reason = d.reason
            log_event(log, "stream_app: irpo trigger waits", reason=d.reason, stable=stable, pctr_version=pctr, impressions=impressions, since=d.since)
        return None
    req = d.request
    fut = await state.requests_out.send(key=req.parent_version.encode("utf-8"), value=encode(req))
    await fut  # acknowledged: from here on the request topic remembers it
    state.requests[req.event_id] = req
    ctx.stats.epoch_requests.append(req.event_id)
    state.last_reason = d.reason
    log_event(
        log, "stream_app: irpo epoch requested", request_id=req.event_id, parent=req.parent_version, pctr_version=req.pctr_version,
        impressions_total=req.impressions_total, impressions_since_last=req.impressions_since_last,
    )
    return req


def register(app, ctx: StreamContext, pctr_registry, bootstrap: str) -> TriggerState:
    """Attach the trigger's timer ``irpo-trigger`` to ``app`` (one :func:`maybe_request` at a time, on
    the leader: one trigger per app; call only with ``LLMA_IRPO_TRIGGER_ENABLED``); returns its state."""
    s = ctx.settings
    state = TriggerState(s, bootstrap, pctr_registry, ctx.topics.rollout, ctx.topics.irpo_requests)
    state.requests_out = app.topic(ctx.topics.irpo_requests, value_serializer="raw", key_serializer="raw", partitions=1)
    register_leader_timer(
        app, ctx, state, lambda: maybe_request(ctx, state), name="irpo-trigger", interval_s=s.pctr_retrain_interval_s, failure="stream_app: irpo trigger failed",
    )

    @app.on_before_shutdown.connect
    async def close_trigger(sender, **kwargs):  # noqa: ARG001 - Faust's signal signature
        await asyncio.get_running_loop().run_in_executor(state.pool, state.close)

    return state
