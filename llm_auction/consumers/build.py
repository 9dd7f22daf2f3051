"""Assembling services from settings: one place that turns ``LLMA_*`` into running handlers.

The CLI's ``serve`` commands, the in-process demo and the integration tests all build services
here, so a service started by hand, in compose, or in a test is the same object. Heavy models are
opened by the caller and passed in (the demo shares one text encoder between the responder's
candidate retrieval and the user simulator).
"""

from __future__ import annotations

import threading

from llm_auction.schemas import ClickEvent, QueryEvent, ResponseEvent
from llm_auction.schemas.catalog import load_catalog
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import CLICKS, QUERIES, RESPONSES

from llm_auction.infra.kafka import make_consumer
from llm_auction.mechanisms import Arms
from llm_auction.mechanisms.base import ScoreFn

from .user_sim import UserSimHandler
from .local_loop import LocalLoop
from .control import ControlFollower
from .responder import ResponderHandler
from .routing import PolicyRouter
from .service import ServiceConfig, StreamService
from .sink import SinkHandler


def candidate_picker(settings: Settings, encoder=None):
    """Top-K candidates by relevance when ``candidates_k`` is set, else every candidate (None).

    The function is :func:`llm_auction.models.retrieval.candidate_picker`, shared with IRPO's
    sampler so a policy trains on the candidates it is shown when serving.
    """
    from llm_auction.models.retrieval import candidate_picker as picker

    return picker(settings.candidates_k, encoder)


def _service(settings: Settings, bootstrap: str, cfg: ServiceConfig, handler, producer, stop, **consumer_overrides) -> StreamService:
    cfg.fault_timeout_s = settings.service_fault_timeout_s
    consumer = make_consumer(settings, bootstrap, cfg.group_id, list(cfg.topics), max_poll_records=max(cfg.batch_size, 1), **consumer_overrides)
    return StreamService(cfg, handler, consumer, producer, stop)


def responder_service(settings: Settings, bootstrap: str, producer, backend, pick=None, stop: threading.Event | None = None, policy: PolicyRouter | None = None, control=None,
                      score: ScoreFn | None = None) -> StreamService:
    """The responder; ``control`` (a :class:`~llm_auction.consumers.control.ControlFollower`) makes it
    follow the policy-version and rollout topics, else it serves ``policy`` (default: LLMA_POLICY_VERSION).
    ``score`` is the served pCTR that mechanism arms (``mosaic``, ``slot``) select and rank with;
    without it a rollout to such an arm is refused (the routing stays)."""
    router = control.router if control is not None else (policy or PolicyRouter(settings.policy_version))
    arms = Arms(backend, score=score, base_version=settings.policy_version, seed=settings.seed)
    if control is not None:
        control.arm_problem = arms.problem  # a rollout to an arm this responder cannot build is refused, not crashed on
    handler = ResponderHandler(backend, load_catalog(), router, pick, control, arms=arms)
    cfg = ServiceConfig("responder", "llma-responder", {QUERIES: QueryEvent}, batch_size=settings.adllm_batch_size, batch_max_wait_s=0.2)
    # a batch of a best-of-N arm may outlast kafka-python's 300 s between polls (LLMA_RESPONDER_MAX_BATCH_S)
    return _service(settings, bootstrap, cfg, handler, producer, stop, max_poll_interval_ms=int(settings.responder_max_batch_s * 1000))


def responder_control(settings: Settings, bootstrap: str, backend, producer, **topics) -> ControlFollower:
    """A (not yet started) follower of the policy-version and rollout topics for a responder over ``backend``,
    routing from LLMA_POLICY_VERSION until a rollout says otherwise (docs/rollout.md)."""
    return ControlFollower(settings, bootstrap, backend, PolicyRouter(settings.policy_version), producer, **topics)


def user_sim_service(settings: Settings, bootstrap: str, producer, simulator, stop: threading.Event | None = None) -> StreamService:
    # No batch window: the click model is cheap per response and batches grow with load anyway
    # (what one poll returns); a window only delays responses at light load (see service.py).
    cfg = ServiceConfig("user-sim", "llma-user-sim", {RESPONSES: ResponseEvent}, batch_size=64, batch_max_wait_s=0.0)
    return _service(settings, bootstrap, cfg, UserSimHandler(simulator), producer, stop)


def sink_service(settings: Settings, bootstrap: str, producer, client, stop: threading.Event | None = None) -> StreamService:
    cfg = ServiceConfig(
        "sink", "llma-sink", {QUERIES: QueryEvent, RESPONSES: ResponseEvent, CLICKS: ClickEvent},
        batch_size=settings.sink_batch_size, batch_max_wait_s=settings.sink_batch_max_wait_s,
    )
    return _service(settings, bootstrap, cfg, SinkHandler(client), producer, stop)


def local_loop(settings: Settings, bootstrap: str, producer, backend, simulator, client, pick=None, control: ControlFollower | None = None,
               score: ScoreFn | None = None) -> LocalLoop:
    """Responder, user simulator and sink for one process, sharing one stop event; ``control``
    (a started :func:`responder_control`) makes the responder follow the control topics; ``score``
    as in :func:`responder_service`."""
    stop = threading.Event()
    return LocalLoop(
        responder_service(settings, bootstrap, producer, backend, pick, stop, control=control, score=score),
        user_sim_service(settings, bootstrap, producer, simulator, stop),
        sink_service(settings, bootstrap, producer, client, stop),
        stop,
    )
