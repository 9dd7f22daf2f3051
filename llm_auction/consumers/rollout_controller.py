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
   ClickHouse, summed per user (``warehouse.arm_users``: responses ``FINAL`` joined to their clicks
   ``FINAL``; per query: revenue, what the clicks paid, ``sum(coalesce(price, bid) * clicked)``,
   reward Eq. 8 with the observed clicks, ``revenue - 10 n_ad^2 - 500 format_error``, the same as
   migration 0005's views), counting only answers older than ``attribution_window_s`` (their clicks
   may still be on the way), and applies :func:`decide`.

The rule (:func:`decide`; parameters are settings, docs/rollout.md). The primary metric is reward
per query; the unit is the user (the router hashes users), so every variance is the per-user
(cluster-robust) one of ``sequential.clustered``:

- fewer than ``min_queries`` in either arm: wait;
- guardrail: the same mSPRT (mixture sd 0.1) on the format-error rate shows the candidate's above
  the stable's + ``max_format_error_increase``: roll back;
- mSPRT (``consumers/sequential.py``, normal mixture with sd ``tau``) on reward per query at
  level ``alpha``, valid at every look (CUPED-adjusted when the arms carry a covariate):
  significant and higher: promote; significant and lower: roll back;
- neither: at ``max_queries`` candidate queries the canary is extended once, to
  ``max_queries + extend_queries``; at the end of that budget it ends ``inconclusive`` (the
  candidate is taken out, the stable version kept, the estimate and interval recorded): a
  point estimate never decides, so ``alpha`` bounds the false promotions at the end too;
- a ``paused`` rollout is left alone (a person resumes it with ``policy rollout``).

Every decision records each arm's queries and users (``evidence``) and the test's estimate,
confidence-sequence interval and p-value (``test``).

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
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from llm_auction.infra import warehouse
from llm_auction.infra.clickhouse import describe_error
from llm_auction.infra.kafka import open_reader, read_topics
from llm_auction.logs import log_event
from llm_auction.schemas import PolicyVersion, RolloutEvent, decode, encode
from llm_auction.schemas.events import ArmEvidence
from llm_auction.schemas.settings import Settings
from llm_auction.schemas.topics import POLICY_VERSIONS, ROLLOUT

from .sequential import ArmStats, MsprtResult, Unit, clustered, cuped_arms, msprt

log = logging.getLogger(__name__)

DECISIONS_TABLE = "llm_auction.rollout_decisions"
TERMINAL = ("promoted", "rolled_back", "inconclusive")


RULE_SETTINGS = {  # RolloutRule field -> the Settings field it comes from
    "canary_share": "rollout_canary_share", "min_queries": "rollout_min_queries", "max_queries": "rollout_max_queries",
    "alpha": "rollout_alpha", "tau": "rollout_mixture_sd", "max_format_error_increase": "rollout_max_format_error_increase",
    "extend_queries": "rollout_extend_queries", "attribution_window_s": "rollout_attribution_window_s",
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
    extend_queries: int = _default("extend_queries")
    attribution_window_s: float = _default("attribution_window_s")

    @property
    def budget(self) -> int:
        """Candidate-arm queries at which a canary without a significant result ends inconclusive."""
        return self.max_queries + self.extend_queries

    @classmethod
    def from_settings(cls, s) -> "RolloutRule":
        return cls(**{f: getattr(s, name) for f, name in RULE_SETTINGS.items()})


@dataclass(frozen=True)
class Arm:
    """One arm's evidence: the wire's summary and the test's sufficient statistics.

    ``reward`` (and ``format_error``) are per-query means with the per-user variance
    (:func:`arm_of_users`); ``format_error`` None: a Bernoulli variance from the evidence's rate.
    ``reward_iid`` (optional): the same mean with the iid variance, recorded beside the per-user
    one to show what the unit changes. ``covariate`` (optional): per-user (queries, reward sum,
    covariate sum) for CUPED; None in either arm: reward unadjusted."""

    evidence: ArmEvidence
    reward: ArmStats
    format_error: ArmStats | None = None
    reward_iid: ArmStats | None = None
    covariate: tuple[Unit, ...] | None = None


GUARDRAIL_TAU = 0.1  # mixture sd of the format-error difference: effects of a few points to a few tens


def _bernoulli_var(rate: float, n: int) -> float:
    """Sample variance of a 0/1 metric with mean ``rate`` over ``n`` queries."""
    return rate * (1.0 - rate) * n / (n - 1) if n > 1 else 0.0


def arm_of_users(rows: Sequence[dict]) -> Arm:
    """One arm from its per-user rows (``warehouse.arm_users``: queries, reward_sum, reward_sq_sum,
    revenue_sum, format_errors; optional ``covariate_sum``).

    Why per user: the router assigns users, so the user is the unit whose outcomes are independent;
    :func:`sequential.clustered` gives the mean per query with that variance. A covariate is used
    only when every row carries one (the warehouse stores none yet: docs/rollout.md)."""
    rows = [r for r in rows if int(r["queries"]) > 0]
    n = sum(int(r["queries"]) for r in rows)
    if n == 0:
        return Arm(ArmEvidence(queries=0, users=0), ArmStats(0, 0.0, 0.0))
    reward = clustered((int(r["queries"]), float(r["reward_sum"])) for r in rows)
    errors = clustered((int(r["queries"]), float(r["format_errors"])) for r in rows)
    sq = sum(float(r["reward_sq_sum"]) for r in rows)
    iid = ArmStats(n, reward.mean, max(0.0, (sq - n * reward.mean ** 2) / (n - 1)) if n > 1 else 0.0)
    ev = ArmEvidence(queries=n, users=len(rows), revenue_per_query=sum(float(r["revenue_sum"]) for r in rows) / n,
                     reward_per_query=reward.mean, format_error_rate=errors.mean)
    cov = None
    if all(r.get("covariate_sum") is not None for r in rows):
        cov = tuple(Unit(int(r["queries"]), float(r["reward_sum"]), float(r["covariate_sum"])) for r in rows)
    return Arm(ev, reward, errors, iid, cov)


def _guardrail(rule: RolloutRule, stable: Arm, candidate: Arm) -> MsprtResult:
    """The format-error guardrail as a sequential test: the candidate's rate, less the margin,
    against the stable's, so that a few more errors in a small canary do not end it."""
    # (a raw comparison once rolled back a candidate at 4 errors in 26 against 3 in 38)
    def stats(a: Arm) -> ArmStats:
        n, rate = a.evidence.queries, a.evidence.format_error_rate or 0.0
        return a.format_error or ArmStats(n, rate, _bernoulli_var(rate, n))

    c = stats(candidate)
    return msprt(ArmStats(c.n, c.mean - rule.max_format_error_increase, c.var), stats(stable), GUARDRAIL_TAU, rule.alpha)


def _primary(rule: RolloutRule, stable: Arm, candidate: Arm) -> tuple[MsprtResult, dict[str, float]]:
    """The mSPRT on reward per query, CUPED-adjusted when both arms carry a covariate; the extra
    statistics recorded with it (the unadjusted interval beside the adjusted one, so the record
    shows what the adjustment bought; the iid variance beside the per-user one)."""
    r = msprt(candidate.reward, stable.reward, rule.tau, rule.alpha)
    extra: dict[str, float] = {}
    if candidate.reward_iid is not None and stable.reward_iid is not None:
        extra["variance_iid"] = msprt(candidate.reward_iid, stable.reward_iid, rule.tau, rule.alpha).variance
    if candidate.covariate is None or stable.covariate is None:
        return r, extra
    s_adj, c_adj, theta = cuped_arms(stable.covariate, candidate.covariate)
    extra |= {"cuped_theta": theta, "unadjusted_diff": r.diff, "unadjusted_ci_low": r.ci_low, "unadjusted_ci_high": r.ci_high}
    return msprt(c_adj, s_adj, rule.tau, rule.alpha), extra


def _arms_text(stable: Arm, candidate: Arm) -> str:
    s, c = stable.evidence, candidate.evidence
    return f"candidate {c.queries} queries / {c.users} users, stable {s.queries} / {s.users}"


def decide(rule: RolloutRule, stable: Arm, candidate: Arm) -> tuple[str | None, str, dict[str, float]]:
    """``(state, reason, test statistics)``; state is None while the canary goes on.

    States: ``rolled_back`` (guardrail failed, or reward significantly lower), ``promoted``
    (reward significantly higher), ``inconclusive`` (the budget ``max_queries + extend_queries``
    ended without either). Never a decision by the point estimate: that would promote about
    half of the candidates no better than the stable version."""
    n_c, n_s = candidate.evidence.queries, stable.evidence.queries
    if n_c < rule.min_queries or n_s < rule.min_queries:
        return None, f"waiting: {n_c} and {n_s} queries, {rule.min_queries} needed per arm", {}
    g = _guardrail(rule, stable, candidate)
    r, extra = _primary(rule, stable, candidate)
    test = r.as_dict() | {f"format_error_{k}": v for k, v in g.as_dict().items()} | extra
    test = {k: v for k, v in test.items() if math.isfinite(v)}  # an unbounded interval is left out: the wire's JSON has no inf
    cuped = " (CUPED)" if "cuped_theta" in extra else ""
    estimate = f"reward per query {r.diff:+.2f}{cuped}, {1 - rule.alpha:.0%} confidence sequence {r.ci_low:+.2f}..{r.ci_high:+.2f}, always-valid p {r.p_value:.4f}"
    arms = _arms_text(stable, candidate)
    if g.reject and g.diff > 0:
        fe_c, fe_s = candidate.evidence.format_error_rate or 0.0, stable.evidence.format_error_rate or 0.0
        return "rolled_back", (f"guardrail: format-error rate {fe_c:.3f} exceeds stable {fe_s:.3f} by more than {rule.max_format_error_increase} "
                               f"(always-valid p {g.p_value:.4f} <= {rule.alpha}); {estimate}; {arms}"), test
    if r.reject:
        return ("promoted" if r.diff > 0 else "rolled_back"), f"mSPRT: {estimate} <= {rule.alpha}; {arms}", test
    if n_c >= rule.budget:
        return "inconclusive", f"inconclusive at {n_c} queries (budget {rule.budget}): {estimate} > {rule.alpha}; {arms}", test
    if n_c >= rule.max_queries:
        return None, f"extended: no significant result at {rule.max_queries} queries, continuing up to {rule.budget}: {estimate}; {arms}", test
    return None, f"continuing: {estimate}; {arms}", test


class DecisionStore:
    """The controller's warehouse reads and writes (one client, serialized by a lock)."""

    def __init__(self, client):
        self.client = client
        self.lock = threading.Lock()

    def arms(self, versions: list[str], since: datetime, until: datetime) -> dict[str, Arm]:
        """Each version's :class:`Arm` over its answers written in ``[since, until)``, per user."""
        with self.lock:
            rows = warehouse.arm_users(self.client, versions, since, until)
        return {v: arm_of_users(rows.get(v, [])) for v in versions}

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
        until = datetime.now(timezone.utc) - timedelta(seconds=self.rule.attribution_window_s)  # younger answers may still get clicks
        arms = self.store.arms([stable, cand], self._canary_since(cand), until)
        state, reason, test = decide(self.rule, arms[stable], arms[cand])
        if state is None:
            log_event(log, "canary continues", service=self.name, candidate=cand, reason=reason)
            return None
        evidence = {v: a.evidence for v, a in arms.items()}
        eid = RolloutEvent.decision_id(stable, cand, state, 0.0)
        if state == "promoted":
            e = RolloutEvent(event_id=eid, stable_version=cand, state="promoted", reason=f"{reason}; previous stable {stable}", decided_by=self.name, evidence=evidence, test=test)
        else:  # rolled_back or inconclusive: the candidate is out, the stable version stays
            kept = f"; stable {stable} kept" if state == "inconclusive" else ""
            e = RolloutEvent(event_id=eid, stable_version=stable, candidate_version=cand, candidate_share=0.0, state=state, reason=reason + kept,
                             decided_by=self.name, evidence=evidence, test=test)
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


__all__ = ["Arm", "DecisionStore", "RolloutController", "RolloutRule", "arm_of_users", "decide", "operator_event"]
