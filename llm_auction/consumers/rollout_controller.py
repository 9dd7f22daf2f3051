"""The rollout controller: canary every announced policy version, then promote or roll it back.

A service of its own (``llm-auction serve rollout-controller``), not in the Faust app: it looks at
the warehouse every ``LLMA_ROLLOUT_CHECK_INTERVAL_S`` and decides slowly, so it needs no stream
processing, and a decision must not wait on the Faust worker's loop.

Each look:

1. it reads what is new on ``auction.policy-versions`` and ``auction.rollout`` (its own consumer,
   partitions assigned by hand, read from the beginning at start: the rollout topic is the
   history of decisions, and the latest event is the routing responders serve);
2. with no canary running, the oldest announced version that no rollout has named yet starts a
   canary at ``LLMA_ROLLOUT_CANARY_SHARE`` against the current stable version;
3. with a canary running, it reads each arm's answered queries since the canary began from
   ClickHouse (responses ``FINAL`` joined to their clicks ``FINAL``; per query: revenue, what the
   clicks paid, ``sum(coalesce(price, bid) * clicked)``, reward Eq. 8 with the observed clicks, ``revenue - 10 n_ad^2 - 500
   format_error``, the same as migration 0005's views) and applies :func:`decide`.

The rule (:func:`decide`; parameters are settings, docs/rollout.md):

- fewer than ``min_queries`` in either arm: wait;
- guardrail: the same mSPRT (mixture sd 0.1) on the format-error rate shows the candidate's above
  the stable's + ``max_format_error_increase``: roll back;
- mSPRT (``consumers/sequential.py``, normal mixture with sd ``tau``) on reward per query at
  level ``alpha``, valid at every look: significant and higher: promote; significant and lower:
  roll back;
- the candidate arm reached ``max_queries`` without a significant result: the point estimate
  decides (higher reward per query: promote; else roll back), so no canary runs forever;
- a ``paused`` rollout is left alone (a person resumes it with ``policy rollout``).

No decision repeated or lost: a decision's ``event_id`` is derived from it
(``RolloutEvent.decision_id``); it is first recorded in ``llm_auction.rollout_decisions``
(ReplacingMergeTree by that id), then sent and flushed. A restarted controller rebuilds its state
from the rollout topic, sends again the recorded decisions the topic lacks (a crash between
the two writes) and records the topic's events the table lacks (decisions made by people with
``llm-auction policy``). Being deterministic in the history, it then takes no decision twice.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from llm_auction.infra import warehouse
from llm_auction.infra.clickhouse import describe_error
from llm_auction.infra.kafka import open_reader, read_topics
from llm_auction.logs import log_event
from llm_auction.schemas import PolicyVersion, RolloutEvent, decode, encode
from llm_auction.schemas.events import ArmEvidence
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import POLICY_VERSIONS, ROLLOUT

from .sequential import ArmStats, msprt

log = logging.getLogger(__name__)

DECISIONS_TABLE = "llm_auction.rollout_decisions"
TERMINAL = ("promoted", "rolled_back")


RULE_SETTINGS = {  # RolloutRule field -> the Settings field it comes from
    "canary_share": "rollout_canary_share", "min_queries": "rollout_min_queries", "max_queries": "rollout_max_queries",
    "alpha": "rollout_alpha", "tau": "rollout_mixture_sd", "max_format_error_increase": "rollout_max_format_error_increase",
}


def _default(field_name: str):
    return Settings.model_fields[RULE_SETTINGS[field_name]].default


@dataclass(frozen=True)
class RolloutRule:
    """The controller's decision rule (see the module docstring); each field's default is its
    ``LLMA_ROLLOUT_*`` setting's (:data:`RULE_SETTINGS`), so the two cannot drift."""

    canary_share: float = _default("canary_share")
    min_queries: int = _default("min_queries")
    max_queries: int = _default("max_queries")
    alpha: float = _default("alpha")
    tau: float = _default("tau")
    max_format_error_increase: float = _default("max_format_error_increase")

    @classmethod
    def from_settings(cls, s) -> "RolloutRule":
        return cls(**{f: getattr(s, name) for f, name in RULE_SETTINGS.items()})


@dataclass(frozen=True)
class Arm:
    """One arm's evidence: the wire's summary and the test's sufficient statistics of reward per query."""

    evidence: ArmEvidence
    reward: ArmStats


GUARDRAIL_TAU = 0.1  # mixture sd of the format-error difference: effects of a few points to a few tens


def _bernoulli_var(rate: float, n: int) -> float:
    """Sample variance of a 0/1 metric with mean ``rate`` over ``n`` queries."""
    return rate * (1.0 - rate) * n / (n - 1) if n > 1 else 0.0


def decide(rule: RolloutRule, stable: Arm, candidate: Arm) -> tuple[str | None, str, dict[str, float]]:
    """``(state, reason, test statistics)``; state is None while the canary goes on."""
    n_c, n_s = candidate.evidence.queries, stable.evidence.queries
    if n_c < rule.min_queries or n_s < rule.min_queries:
        return None, f"waiting: {n_c} and {n_s} queries, {rule.min_queries} needed per arm", {}
    fe_c, fe_s = candidate.evidence.format_error_rate or 0.0, stable.evidence.format_error_rate or 0.0
    r = msprt(candidate.reward, stable.reward, rule.tau, rule.alpha)
    # the guardrail is a sequential test too: the candidate's rate, less the margin, against the
    # stable's (a raw comparison rolled back a candidate at 4 errors in 26 against 3 in 38)
    g = msprt(ArmStats(n_c, fe_c - rule.max_format_error_increase, _bernoulli_var(fe_c, n_c)), ArmStats(n_s, fe_s, _bernoulli_var(fe_s, n_s)), GUARDRAIL_TAU, rule.alpha)
    test = r.as_dict() | {f"format_error_{k}": v for k, v in g.as_dict().items()}
    if g.reject and g.diff > 0:
        return "rolled_back", (f"guardrail: format-error rate {fe_c:.3f} exceeds stable {fe_s:.3f} by more than {rule.max_format_error_increase} "
                               f"(always-valid p {g.p_value:.4f} <= {rule.alpha})"), test
    if r.reject:
        state = "promoted" if r.diff > 0 else "rolled_back"
        return state, f"mSPRT: reward per query differs by {r.diff:+.2f} (always-valid p {r.p_value:.4f} <= {rule.alpha}; CI {r.ci_low:+.2f}..{r.ci_high:+.2f})", test
    if n_c >= rule.max_queries:
        state = "promoted" if r.diff > 0 else "rolled_back"
        return state, f"maximum sample ({n_c} >= {rule.max_queries} queries) without significance: point estimate {r.diff:+.2f} decides", test
    return None, f"continuing: difference {r.diff:+.2f}, always-valid p {r.p_value:.3f}", test


class DecisionStore:
    """The controller's warehouse reads and writes (one client, serialized by a lock)."""

    def __init__(self, client):
        self.client = client
        self.lock = threading.Lock()

    def arms(self, versions: list[str], since: datetime) -> dict[str, Arm]:
        with self.lock:
            rows = warehouse.arm_metrics(self.client, versions, since)
        out = {v: Arm(ArmEvidence(queries=0), ArmStats(0, 0.0, 0.0)) for v in versions}
        for version, r in rows.items():
            n, var = int(r["queries"]), r["reward_var"]
            ev = ArmEvidence(queries=n, revenue_per_query=float(r["revenue_per_query"]), reward_per_query=float(r["reward_per_query"]), format_error_rate=float(r["format_error_rate"]))
            out[version] = Arm(ev, ArmStats(n, float(r["reward_per_query"]), float(var) if var == var and n > 1 else 0.0))
        return out

    def record(self, event: RolloutEvent) -> None:
        sql = (
            f"INSERT INTO {DECISIONS_TABLE} (decision_id, decided_at, stable_version, candidate_version, candidate_share, state, reason, decided_by, evidence, test, event) "
            "VALUES ({i:String}, {t:DateTime64(3, 'UTC')}, {s:String}, {c:String}, {p:Float64}, {st:String}, {r:String}, {b:String}, {e:String}, {x:String}, {j:String})"
        )
        params = {
            "i": event.event_id, "t": event.decided_at, "s": event.stable_version, "c": event.candidate_version or "", "p": event.candidate_share,
            "st": event.state, "r": event.reason, "b": event.decided_by, "e": json.dumps({k: v.model_dump() for k, v in event.evidence.items()}),
            "x": json.dumps(event.test), "j": encode(event).decode("utf-8"),
        }
        try:
            with self.lock:
                self.client.command(sql, parameters=params)
        except Exception as e:  # noqa: BLE001
            raise describe_error(e, "record a rollout decision") from None

    def recorded(self) -> list[RolloutEvent]:
        """Every recorded decision, oldest first."""
        try:
            with self.lock:
                rows = self.client.query(f"SELECT event FROM {DECISIONS_TABLE} FINAL ORDER BY decided_at, decision_id").result_rows
        except Exception as e:  # noqa: BLE001
            raise describe_error(e, "read the rollout decisions") from None
        return [decode(r[0], RolloutEvent) for r in rows]


class RolloutController:
    """Canary, measure, decide; see the module docstring. ``step()`` is one look."""

    def __init__(self, settings, bootstrap: str, client, producer, *, rule: RolloutRule | None = None,
                 policy_topic: str = POLICY_VERSIONS, rollout_topic: str = ROLLOUT, name: str = "rollout-controller"):
        self.settings, self.bootstrap, self.producer, self.name = settings, bootstrap, producer, name
        self.store = DecisionStore(client)
        self.rule = rule or RolloutRule.from_settings(settings)
        self.policy_topic, self.rollout_topic = policy_topic, rollout_topic
        self.default_stable = settings.policy_version
        self.announced: dict[str, PolicyVersion] = {}
        self.history: list[RolloutEvent] = []
        self._ids: set[str] = set()
        self._recorded: set[str] = set()
        self.consumer = None

    # -- state ---------------------------------------------------------------------------------
    def start(self) -> "RolloutController":
        """Read both topics from the beginning and reconcile them with the decisions table."""
        self.consumer = open_reader(self.settings, self.bootstrap, [self.policy_topic, self.rollout_topic])
        self._follow()
        recorded = self.store.recorded()
        self._recorded = {e.event_id for e in recorded}
        for e in recorded:  # recorded but never announced (a crash between the two writes): send it now
            if e.event_id not in self._ids:
                log_event(log, "announcing a recorded decision the rollout topic lacks", service=self.name, event_id=e.event_id, state=e.state)
                self._send(e)
        self._record_unrecorded()
        log_event(log, "rollout controller started", service=self.name, decisions=len(self.history), announced=len(self.announced), current=self._describe())
        return self

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    def _follow(self) -> None:
        for e in read_topics(self.consumer, {self.policy_topic: PolicyVersion, self.rollout_topic: RolloutEvent}):
            if isinstance(e, PolicyVersion):
                self.announced.setdefault(e.version, e)
            elif e.event_id not in self._ids:
                self._ids.add(e.event_id)
                self.history.append(e)

    def _record_unrecorded(self) -> None:
        for e in self.history:
            if e.event_id not in self._recorded:
                self.store.record(e)  # e.g. a person's decision from `llm-auction policy`
                self._recorded.add(e.event_id)

    def _send(self, e: RolloutEvent) -> None:
        self.producer.send(self.rollout_topic, key=(e.candidate_version or e.stable_version).encode("utf-8"), value=encode(e))
        self.producer.flush(timeout=30)
        if e.event_id not in self._ids:
            self._ids.add(e.event_id)
            self.history.append(e)

    def _decide(self, e: RolloutEvent) -> RolloutEvent:
        """Record, then announce (the order that makes a crash repeat nothing and lose nothing)."""
        if e.event_id not in self._recorded:
            self.store.record(e)
            self._recorded.add(e.event_id)
        self._send(e)
        log_event(log, "rollout decision", service=self.name, state=e.state, stable=e.stable_version, candidate=e.candidate_version, share=e.candidate_share, reason=e.reason, event_id=e.event_id)
        return e

    @property
    def current(self) -> RolloutEvent | None:
        return self.history[-1] if self.history else None

    @property
    def stable(self) -> str:
        return self.current.stable_version if self.current else self.default_stable

    def _describe(self) -> dict:
        c = self.current
        return {"stable": self.stable} if c is None else {"stable": c.stable_version, "candidate": c.candidate_version, "share": c.candidate_share, "state": c.state}

    def _canary_since(self, candidate: str) -> datetime:
        """When the running canary of ``candidate`` began (its first canary event since the last terminal one)."""
        since = None
        for e in self.history:
            if e.candidate_version == candidate and e.state == "canary":
                since = since or e.decided_at
            elif e.state in TERMINAL:
                since = None
        return since or datetime.now(timezone.utc)

    # -- one look ------------------------------------------------------------------------------
    def step(self) -> RolloutEvent | None:
        """Read what is new, record people's decisions, and decide at most once; returns the decision."""
        self._follow()
        self._record_unrecorded()
        cur = self.current
        if cur is not None and cur.state == "paused":
            return None
        if cur is not None and cur.state == "canary" and cur.candidate_version:
            return self._evaluate(cur)
        named = {v for e in self.history for v in (e.stable_version, e.candidate_version) if v}
        for version in self.announced:  # topic order: the oldest waiting version first
            if version not in named and version != self.stable:
                share = self.rule.canary_share
                return self._decide(RolloutEvent(
                    event_id=RolloutEvent.decision_id(self.stable, version, "canary", share), stable_version=self.stable,
                    candidate_version=version, candidate_share=share, state="canary", reason="announced: canary starts", decided_by=self.name,
                ))
        return None

    def _evaluate(self, cur: RolloutEvent) -> RolloutEvent | None:
        stable, cand = cur.stable_version, cur.candidate_version
        arms = self.store.arms([stable, cand], self._canary_since(cand))
        state, reason, test = decide(self.rule, arms[stable], arms[cand])
        if state is None:
            log_event(log, "canary continues", service=self.name, candidate=cand, reason=reason)
            return None
        evidence = {v: a.evidence for v, a in arms.items()}
        eid = RolloutEvent.decision_id(stable, cand, state, 0.0)
        if state == "promoted":
            e = RolloutEvent(event_id=eid, stable_version=cand, state="promoted", reason=f"{reason}; previous stable {stable}", decided_by=self.name, evidence=evidence, test=test)
        else:
            e = RolloutEvent(event_id=eid, stable_version=stable, candidate_version=cand, candidate_share=0.0, state="rolled_back", reason=reason, decided_by=self.name, evidence=evidence, test=test)
        return self._decide(e)

    def run(self, stop: threading.Event, interval_s: float | None = None) -> int:
        """Look every ``interval_s`` until ``stop``; returns the number of decisions taken."""
        interval_s = self.settings.rollout_check_interval_s if interval_s is None else interval_s
        made = 0
        if self.consumer is None:
            self.start()
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                made += self.step() is not None
                stop.wait(max(0.0, interval_s - (time.monotonic() - t0)))
        finally:
            self.close()
        return made


def operator_event(history: list[RolloutEvent], default_stable: str, action: str, version: str, share: float | None = None, reason: str = "",
                   known: set[str] | None = None) -> RolloutEvent:
    """A person's decision (``llm-auction policy rollout|promote|rollback``) against the current routing.

    ``rollout V --share S``: canary V at S against the current stable version; ``promote V``: V
    becomes stable; ``rollback V``: V's canary ends (share 0), or, when V is the stable version,
    the stable version before it returns. Raises ``ValueError`` for a request that makes no sense:
    among them a version outside ``known`` (the announced ones, when given), since a decision
    naming a typo would become the routing every responder waits on.
    """
    import uuid

    cur = history[-1] if history else None
    stable = cur.stable_version if cur else default_stable
    if known is not None and version not in known:
        raise ValueError(f"{action}: {version} was never announced on the policy-versions topic (known: {', '.join(sorted(known))})")
    canary = cur.candidate_version if cur is not None and cur.state in ("canary", "paused") else None
    nonce = str(uuid.uuid4())  # each command is its own decision
    by = "operator"
    if action == "rollout":
        if share is None or not 0.0 <= share <= 1.0:
            raise ValueError(f"rollout: --share must be in [0, 1], got {share}")
        if version == stable:
            raise ValueError(f"rollout: {version} is already the stable version")
        return RolloutEvent(event_id=RolloutEvent.decision_id(stable, version, "canary", share, nonce), stable_version=stable, candidate_version=version,
                            candidate_share=share, state="canary", reason=reason or f"operator: {share:.0%} of users", decided_by=by)
    if action == "promote":
        if version == stable:
            raise ValueError(f"promote: {version} is already the stable version")
        return RolloutEvent(event_id=RolloutEvent.decision_id(stable, version, "promoted", 0.0, nonce), stable_version=version, state="promoted",
                            reason=reason or f"operator: promoted; previous stable {stable}", decided_by=by)
    if action == "rollback":
        if version == stable:
            earlier = [e.stable_version for e in history if e.stable_version != version]
            back_to = earlier[-1] if earlier else default_stable
            if back_to == version:
                raise ValueError(f"rollback: {version} is the only stable version known")
            return RolloutEvent(event_id=RolloutEvent.decision_id(back_to, version, "rolled_back", 0.0, nonce), stable_version=back_to, candidate_version=version,
                                state="rolled_back", reason=reason or f"operator: {version} rolled back to {back_to}", decided_by=by)
        if version != canary:
            raise ValueError(f"rollback: {version} is neither the stable version ({stable}) nor in a canary ({canary or 'none running'})")
        return RolloutEvent(event_id=RolloutEvent.decision_id(stable, version, "rolled_back", 0.0, nonce), stable_version=stable, candidate_version=version,
                            state="rolled_back", reason=reason or "operator: rolled back", decided_by=by)
    raise ValueError(f"unknown action {action!r}")


__all__ = ["Arm", "DecisionStore", "RolloutController", "RolloutRule", "decide", "operator_event"]
