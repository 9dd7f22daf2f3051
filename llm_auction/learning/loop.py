"""Algorithm 1 of the paper through the real pipeline, epoch by epoch: read :func:`run_loop` top to bottom.

One process on the embedded defaults (chdb admits one process per folder). Before the first
epoch the stable policy (the base model) serves ``serve_queries`` test queries. Then each epoch t:

1. **reward model**: pCTR retrains on every impression in the warehouse (what policy t-1 and its
   predecessors earned) and is promoted by its gate (``trainer/pctr_publish``); the epoch's reward
   is chosen by ``trainer.reward.open_reward`` (``--reward``: pctr, oracle or auto);
2. **policy**: an IRPO epoch from the stable policy t-1 (``trainer.epoch_setup.run_configured_epoch``),
   sampled through the serving engine that answers the traffic (idle meanwhile), published in the
   registry and announced on ``auction.policy-versions`` (``producers.versions.announce``);
3. **canary**: the responder verifies and hot-loads the version; the rollout controller starts a
   canary at ``canary_share``; test queries are replayed in chunks, the controller looks after
   each chunk, until it promotes, rolls back or ends inconclusive. Its rule is the service's (mSPRT
   on reward per query over users, format-error guardrail) with the minimum, maximum and extension
   sized to this run's budget;
4. a row per version of what that canary served (ClickHouse, by the replay's query ids).

The promoted version is the stable policy of the next epoch; a rolled-back or inconclusive one is not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from llm_auction.logs import log_event

from . import embedded

log = logging.getLogger("llm_auction.loop")


@dataclass
class LoopOptions:
    """What one loop run does; ``llm-auction loop``'s flags are generated from these fields (``demo``: :meth:`demo`)."""

    epochs: int = field(default=3, metadata={"help": "IRPO epochs (each: pCTR retrain, IRPO, canary, decision); 0 only serves"})
    serve_queries: int = field(default=128, metadata={"help": "test queries the base policy answers before the first epoch"})
    canary_queries: int = field(default=128, metadata={"help": "test queries each canary may use (half as many again when it is undecided)"})
    chunk: int = field(default=32, metadata={"help": "queries replayed between two looks of the rollout controller"})
    canary_share: float = field(default=0.5, metadata={"help": "the candidate's share of users during the canary (0.5: both arms gather evidence at the same pace)"})
    min_queries: int = field(default=24, metadata={"help": "queries per arm before the controller may decide"})
    irpo_queries: int = field(default=32, metadata={"help": "train queries per IRPO epoch (each sampled --samples times)"})
    samples: int = field(default=5, metadata={"help": "answers sampled per IRPO query (M)"})
    pairing: Literal["all", "worst"] = field(default="all", metadata={"help": "IRPO pairs: the winner against every loser (the paper), or against the worst only (docs/irpo.md)"})
    sft_weight: float = field(default=1.0, metadata={"help": "weight of the chosen answers' NLL added to the DPO loss (RPO; 0: pure DPO, which drifted into format errors: docs/irpo.md)"})
    reward: Literal["auto", "pctr", "oracle"] = field(default="auto", metadata={
        "help": "IRPO's click probabilities: the promoted pCTR version, the user simulator's exact ones (the paper's Oracle), or auto: "
                "pCTR once a version passed its promotion gate (LLMA_PCTR_MIN_AUC), the oracle before"})

    def __post_init__(self) -> None:
        problems = [f"{k} must be >= {lo}" for k, lo in (("epochs", 0), ("serve_queries", 1), ("canary_queries", 2), ("chunk", 1), ("min_queries", 1), ("irpo_queries", 1), ("samples", 2))
                    if getattr(self, k) < lo]
        if not 0.0 < self.canary_share < 1.0:
            problems.append("canary_share must be in (0, 1)")
        if self.sft_weight < 0:
            problems.append("sft_weight must be >= 0")
        if self.pairing not in ("all", "worst") or self.reward not in ("auto", "pctr", "oracle"):
            problems.append(f"pairing must be all|worst and reward auto|pctr|oracle, got {self.pairing!r}, {self.reward!r}")
        if problems:
            raise ValueError("loop options: " + "; ".join(problems))

    @classmethod
    def demo(cls, **overrides: Any) -> "LoopOptions":
        """``make demo``'s preset: one epoch sized for a fresh 2-core machine (docs/benchmarks.md, ``make demo``)."""
        return cls(**{**dict(epochs=1, serve_queries=96, canary_queries=96, irpo_queries=12, samples=5, min_queries=16), **overrides})


@dataclass
class EpochRow:
    """One version's line in the loop's table."""

    epoch: int
    version: str
    role: str  # stable | candidate
    decision: str
    reward_model: str = "-"  # what scored the candidate's IRPO epoch: a pCTR version or "oracle"
    metrics: dict[str, Any] = field(default_factory=dict)


Step = Callable[..., None]


def log_step(msg: str, **fields: Any) -> None:
    log_event(log, msg, **fields)


def run(settings, o: LoopOptions, *, step: Step = log_step, finish: Callable[[embedded.Pipeline], Any] | None = None) -> tuple[list[EpochRow], Any]:
    """Stand the embedded pipeline up from ``settings``, run :func:`run_loop`, then ``finish(pipeline)``
    (a report, a snapshot) while it is still up; returns the rows and what ``finish`` returned."""
    from llm_auction.models.backends import open_backend

    world = embedded.prepare_world(settings, step)
    model_path = embedded.prepare_model(settings, step)
    step("opening the Ad-LLM and the MiniLM encoder", backend=settings.adllm_backend, model=str(model_path), candidates_k=settings.candidates_k)
    backend = open_backend(settings, model=model_path)
    try:
        with embedded.pipeline(settings, backend, step) as p:
            rows = run_loop(p, world, model_path, o, step)
            step("done", **{f"{svc.config.name}.{k}": v for svc in p.loop.services for k, v in svc.stats.items()}, **embedded.generation_stats(backend))
            extra = finish(p) if finish is not None else None
    finally:
        backend.close()  # vLLM: stops the engine's processes
    return rows, extra


def run_loop(p: embedded.Pipeline, world, model_path: Path, o: LoopOptions, step: Step = log_step) -> list[EpochRow]:
    """Algorithm 1 (module docstring) on a running pipeline; returns the table's rows."""
    from llm_auction.consumers.rollout_controller import RolloutController
    from llm_auction.infra import warehouse
    from llm_auction.producers.versions import announce
    from llm_auction.trainer.registry import ModelRegistry

    s = p.settings
    registry = ModelRegistry(s.resolved_registry_dir(), "policy")
    controller = RolloutController(s, p.bootstrap, p.client, p.producer, rule=canary_rule(s, o), name="loop-controller").start()
    run_tag = time.strftime("%H%M%S")
    rows: list[EpochRow] = []
    try:
        stable = controller.stable
        step("the stable policy serves test traffic", version=stable, queries=o.serve_queries)
        tag = f"loop{run_tag}e0"
        embedded.serve(p, world, o.serve_queries, seed=s.seed, run_id=tag)
        rows.append(EpochRow(0, stable, "stable", "-", metrics=warehouse.policy_metrics(p.client, [tag]).get(stable, {})))
        for t in range(1, o.epochs + 1):
            reward = retrain_reward(p, o, step, t)
            result = irpo_epoch(p, world, model_path, stable, reward, o, step, t)
            if result.manifest is None:
                rows.append(EpochRow(t, "-", "candidate", "no pairs: nothing published", reward.version))
                continue
            announce(registry, result.manifest, p.producer)
            decision, tags = canary(p, world, controller, result.manifest.version, o, step, t, run_tag)
            m = warehouse.policy_metrics(p.client, tags)
            rows.append(EpochRow(t, stable, "stable", "stays" if decision != "promoted" else "retired", metrics=m.get(stable, {})))
            rows.append(EpochRow(t, result.manifest.version, "candidate", decision, reward.version, metrics=m.get(result.manifest.version, {})))
            stable = controller.stable
            step("epoch done", epoch=t, decision=decision, stable=stable)
    finally:
        controller.close()
    return rows


def canary_rule(s, o: LoopOptions):
    """The service's rollout rule with this run's share and a sample sized to its budget: the smaller
    arm expects ``canary_queries x share`` queries, and its maximum sits below that (the hash splits
    users, not queries, exactly), its one extension by half as much again below the loop's extended
    budget, so the controller decides within it. No attribution window: ``embedded.serve`` returns
    once every answer's clicks are in the warehouse."""
    from llm_auction.consumers.rollout_controller import RolloutRule

    per_arm = max(o.min_queries, int(0.7 * o.canary_queries * min(o.canary_share, 1 - o.canary_share)))
    return replace(RolloutRule.from_settings(s), canary_share=o.canary_share, min_queries=min(o.min_queries, per_arm), max_queries=per_arm,
                   extend_queries=per_arm // 2, attribution_window_s=0.0)


def retrain_reward(p: embedded.Pipeline, o: LoopOptions, step: Step, t: int):
    """Retrain pCTR on every impression in the warehouse, then the epoch's reward (``o.reward``,
    by ``trainer.reward.open_reward``'s rule). Too few impressions to fit: the current version stays."""
    from llm_auction.infra import warehouse
    from llm_auction.trainer.pctr_fit import NoTrainingRows, PctrConfig
    from llm_auction.trainer.pctr_publish import retrain_and_publish
    from llm_auction.trainer.registry import ModelRegistry
    from llm_auction.trainer.reward import open_reward

    s = p.settings
    registry = ModelRegistry(s.resolved_registry_dir(), "pctr")
    df = warehouse.impressions(p.client)
    step("retraining pCTR on the warehouse's impressions", epoch=t, impressions=len(df))
    try:
        m = retrain_and_publish(df, registry, p.encoder, PctrConfig(seed=s.seed + t, progress=False), min_auc=s.pctr_min_auc,
                                promote_margin=s.pctr_promote_margin, min_holdout_clicks=s.pctr_min_holdout_clicks)
        step("pCTR version published", epoch=t, version=m.version, promoted=m.promoted, auc=m.metrics.get("auc"))
    except NoTrainingRows as e:  # the policy exposed (almost) no ads yet: nothing to learn, keep what there is
        step("pCTR not retrained: too few impressions; the current version stays", epoch=t, reason=str(e), current=getattr(registry.latest(), "version", None))
    reward = open_reward(o.reward, settings=s, encoder=p.encoder, registry_root=registry.root, simulator=p.simulator)
    if reward.oracle and o.reward == "auto":
        step("no pCTR version passed its promotion gate yet: this epoch's reward uses the simulator's exact click probabilities", epoch=t,
             min_auc=s.pctr_min_auc, min_holdout_clicks=s.pctr_min_holdout_clicks)
    return reward


def irpo_epoch(p: embedded.Pipeline, world, model_path: Path, parent: str, reward, o: LoopOptions, step: Step, t: int):
    """One IRPO epoch from ``parent`` on the serving engine (no traffic flows meanwhile); published, not yet announced."""
    from llm_auction.trainer.epoch_setup import run_configured_epoch
    from llm_auction.trainer.irpo_config import IRPOConfig
    from llm_auction.trainer.registry import ModelRegistry

    s = p.settings
    # The CPU preset's 2 pairs per step matter here: DPO runs beside the serving engine, and a short
    # epoch still takes several optimizer steps (one step would spend its warmup at learning rate 0).
    cfg = IRPOConfig.cpu(queries=o.irpo_queries, query_offset=(t - 1) * o.irpo_queries, samples_per_query=o.samples, pairing=o.pairing,
                         sft_weight=o.sft_weight, reward=o.reward, candidates_k=s.candidates_k or None, bid_seed=s.seed + t, sample_seed=s.seed + t, dpo_seed=s.seed + t)
    base = p.backend.config.base_version
    step("IRPO epoch: sample, score, pair, DPO", epoch=t, parent=parent, queries=cfg.queries, samples=cfg.samples_per_query, reward=reward.version)
    result = run_configured_epoch(
        cfg, world=world, model=model_path, registry=ModelRegistry(s.resolved_registry_dir(), "policy"), parent=None if parent == base else parent,
        encoder=p.encoder, settings=s, reward=reward, backend=p.backend,
    )
    mt = result.metrics
    step("IRPO epoch done", epoch=t, version=result.manifest.version if result.manifest else None, pairs=mt.get("pairs"),
         mean_reward=round(mt.get("mean_reward", float("nan")), 2), **{f"{k}_s": round(v, 1) for k, v in result.stage_s.items()})
    return result


def canary(p: embedded.Pipeline, world, controller, version: str, o: LoopOptions, step: Step, t: int, run_tag: str) -> tuple[str, list[str]]:
    """Canary ``version`` until the controller decides (promoted, rolled_back or inconclusive) or the
    budget ends; (decision, replay tags)."""
    from llm_auction.consumers.rollout_controller import TERMINAL

    decision = controller.step()  # the announcement: a canary starts
    if decision is None or decision.candidate_version != version:
        raise RuntimeError(f"the controller did not start a canary of {version} (current: {controller.current})")
    if not p.control.wait_read(decision.event_id):
        raise RuntimeError(f"the responder did not read the canary decision {decision.event_id} within 30 s")
    step("canary starts", epoch=t, stable=decision.stable_version, candidate=version, share=decision.candidate_share)
    tags, sent, budget = [], 0, o.canary_queries + o.canary_queries // 2  # half again when the split ran short
    extended = False
    while sent < budget:
        if sent >= o.canary_queries and not extended:
            extended = True
            step("no decision within the canary budget: serving up to half as many queries again", epoch=t, sent=sent)
        n = min(o.chunk, budget - sent)
        tag = f"loop{run_tag}e{t}c{len(tags)}"
        embedded.serve(p, world, n, seed=p.settings.seed + 1000 * t + len(tags), run_id=tag, show_progress=False)
        tags.append(tag)
        sent += n
        made = controller.step()
        if made is not None and made.state in TERMINAL:
            step("controller decided", epoch=t, state=made.state, reason=made.reason)
            return made.state, tags
    return "undecided", tags


__all__ = ["EpochRow", "LoopOptions", "canary", "canary_rule", "irpo_epoch", "log_step", "retrain_reward", "run", "run_loop"]
