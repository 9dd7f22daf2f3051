"""``llm-auction loop``: Algorithm 1 of the paper through the real pipeline, epoch by epoch.

One process on the embedded defaults (chdb admits one process per folder), read top to bottom
in :func:`run_loop`. Before the first epoch the stable policy (the base model) serves
``serve_queries`` test queries. Then each epoch t:

1. **reward model**: pCTR retrains on every impression in the warehouse (what policy t-1 and its
   predecessors earned) and is promoted by its AUC gate (``trainer/pctr_publish``);
2. **policy**: an IRPO epoch from the stable policy t-1, sampled through the serving engine that
   answers the traffic (idle meanwhile), scored with the promoted pCTR (or ``--oracle``), DPO on
   a LoRA adapter, published and announced on ``auction.policy-versions``;
3. **canary**: the responder verifies and hot-loads the version; the rollout controller starts a
   canary at ``canary_share``; test queries are replayed in chunks, the controller looks after
   each chunk, until it promotes or rolls back. Its rule is the service's (mSPRT on reward per
   query, format-error guardrail) with the minimum and maximum sample sized to this run's budget,
   so the point estimate decides when the budget ends first;
4. a row per version of what that canary served (ClickHouse, by the replay's query ids).

The promoted version is the stable policy of the next epoch; a rolled-back one is not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llm_auction.cli.args import add_out

log = logging.getLogger("llm_auction.loop")


@dataclass
class LoopOptions:
    """What one ``loop`` run does; the CLI's flags (``demo`` is the preset with one epoch)."""

    epochs: int = 3
    serve_queries: int = 128  # test queries the stable policy answers before the first epoch
    canary_queries: int = 128  # test-query budget of each canary
    chunk: int = 32  # queries replayed between two looks of the controller
    canary_share: float = 0.5  # both arms gather evidence at the same pace
    min_queries: int = 24  # per arm before the controller may decide
    irpo_queries: int = 32  # train queries per IRPO epoch (x samples answers); 16 formed 9-20 pairs
    samples: int = 5
    pairing: str = "all"  # the paper's rule: every loser; "worst": one pair per query
    sft_weight: float = 1.0  # the chosen answers' NLL added to DPO (RPO; IRPOConfig.sft_weight): keeps the answer format
    reward: str = "auto"  # pctr | oracle | auto (pCTR once a version passed its AUC gate, else the oracle)
    report: Path | None = None  # folder for the PNGs and summary.md


@dataclass
class EpochRow:
    """One version's line in the loop's table."""

    epoch: int
    version: str
    role: str  # stable | candidate
    decision: str
    reward_model: str = "-"  # what scored the candidate's IRPO epoch: a pCTR version or "oracle"
    metrics: dict[str, Any] = field(default_factory=dict)


COLUMNS = [
    ("epoch", "epoch", "{:d}"), ("version", "version", "{}"), ("role", "role", "{}"), ("decision", "decision", "{}"), ("reward_model", "trained on", "{}"),
    ("queries", "queries", "{:d}"), ("revenue_per_query", "revenue/q", "{:.2f}"), ("expected_revenue_per_query", "E[rev]/q", "{:.2f}"), ("reward_per_query", "reward/q", "{:.1f}"),
    ("ctr", "CTR", "{:.3f}"), ("ads_per_answer", "ads/answer", "{:.2f}"), ("format_error_rate", "format err", "{:.1%}"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loop",
        help="Algorithm 1 on the embedded defaults: serve, retrain pCTR, IRPO epoch, canary, decide; N epochs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Run the learning loop through the real pipeline in one process (local broker, embedded ClickHouse, "
            "SmolLM2 in vLLM): the base policy serves test queries; then each epoch retrains pCTR on the warehouse's "
            "impressions, runs an IRPO epoch from the stable policy, announces the new version, and lets the rollout "
            "controller canary it on test traffic until it promotes or rolls it back. Prints a table per epoch "
            "(both arms of each canary side by side) and writes the report's PNGs."
        ),
    )
    add_loop_arguments(p, LoopOptions())
    p.set_defaults(handler=_loop)


def add_loop_arguments(p: argparse.ArgumentParser, d: LoopOptions) -> None:
    """The loop's flags with ``d``'s defaults (``demo`` passes its own preset)."""
    p.add_argument("--epochs", type=int, default=d.epochs, help="IRPO epochs (each: pCTR retrain, IRPO, canary, decision)")
    p.add_argument("--serve-queries", type=int, default=d.serve_queries, help="test queries the base policy answers before the first epoch")
    p.add_argument("--canary-queries", type=int, default=d.canary_queries, help="test queries each canary may use")
    p.add_argument("--canary-share", type=float, default=d.canary_share, help="the candidate's share of users during the canary")
    p.add_argument("--min-queries", type=int, default=d.min_queries, help="queries per arm before the controller may decide")
    p.add_argument("--irpo-queries", type=int, default=d.irpo_queries, help="train queries per IRPO epoch")
    p.add_argument("--samples", type=int, default=d.samples, help="answers sampled per IRPO query (M)")
    p.add_argument("--pairing", choices=["all", "worst"], default=d.pairing,
                   help="IRPO pairs: the winner against every answer more than delta_th below it (the paper), or against the worst only "
                   "(fewer pairs, faster DPO; its pairs mostly contrast format errors: docs/irpo.md)")
    p.add_argument("--sft-weight", type=float, default=d.sft_weight,
                   help="weight of the chosen answers' NLL added to the DPO loss (RPO; 0: pure DPO, which drifted into format errors: docs/irpo.md)")
    p.add_argument("--reward", choices=["auto", "pctr", "oracle"], default=d.reward,
                   help="IRPO's click probabilities: the promoted pCTR model, the user simulator's exact ones (the paper's Oracle), "
                   "or auto: pCTR once a version passed its AUC gate (LLMA_PCTR_MIN_AUC), the oracle before (a few hundred impressions rarely pass)")
    p.add_argument("--backend", choices=["vllm", "transformers"], help="Ad-LLM backend (default: LLMA_ADLLM_BACKEND, vllm)")
    p.add_argument("--model", help="Ad-LLM model folder (default: <data_dir>/models/smollm2, prepared if missing)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    add_out(p, "report folder (PNGs, summary.md)", "<LLMA_DATA_DIR>/reports/loop-<time>")


def options_from_args(args, report: Path | None) -> LoopOptions:
    from llm_auction.cli import CliError

    o = LoopOptions(epochs=args.epochs, serve_queries=args.serve_queries, canary_queries=args.canary_queries, canary_share=args.canary_share,
                    min_queries=args.min_queries, irpo_queries=args.irpo_queries, samples=args.samples, pairing=args.pairing,
                    sft_weight=args.sft_weight, reward=args.reward, report=report)
    problems = [f"--{k.replace('_', '-')} must be >= {lo}" for k, lo in (("epochs", 0), ("serve_queries", 1), ("canary_queries", 2), ("min_queries", 1), ("irpo_queries", 1), ("samples", 2)) if getattr(o, k) < lo]
    if not 0.0 < o.canary_share < 1.0:
        problems.append("--canary-share must be in (0, 1)")
    if o.sft_weight < 0:
        problems.append("--sft-weight must be >= 0")
    if problems:
        raise CliError("; ".join(problems))
    return o


def _loop(args) -> int:
    from llm_auction.schemas.settings import get_settings

    s = get_settings()
    report = args.out or s.data_dir / "reports" / time.strftime("loop-%Y%m%d-%H%M%S")
    return main(s, args, options_from_args(args, report))


def main(s, args, o: LoopOptions, snapshot: bool = False) -> int:
    """Set up the embedded pipeline from the CLI's ``args`` and run :func:`run_loop` (shared with ``demo``)."""
    from llm_auction.cli import embedded
    from llm_auction.consumers import build
    from llm_auction.logs import log_event

    upd = {k: v for k, v in (("adllm_backend", args.backend), ("adllm_model", Path(args.model) if args.model else None)) if v is not None}
    s = s.with_overrides(**upd)  # validated: a bad value fails now, in one line
    step = lambda msg, **kw: log_event(log, msg, **kw)  # noqa: E731
    world = embedded.prepare_world(s, step)
    model_path = embedded.prepare_model(s, step)
    step("opening the Ad-LLM and the MiniLM encoder", backend=s.adllm_backend, model=str(model_path), candidates_k=s.candidates_k)
    backend = build.open_backend(s, model_path)
    # stdout is the table (or --json) alone: TRL's trainer writes its log lines there
    quiet = contextlib.redirect_stdout(sys.stderr)
    try:
        with quiet, embedded.pipeline(s, backend, step) as p:
            rows = run_loop(p, world, model_path, o, step)
            step("done", **{f"{svc.config.name}.{k}": v for svc in p.loop.services for k, v in svc.stats.items()}, **embedded.generation_stats(backend))
            from llm_auction.cli.monitor import render_snapshot, snapshot as take_snapshot, write_report

            if o.report is not None:
                step("report written", summary=str(write_report(p.client, o.report)))
            snap = take_snapshot(p.client) if snapshot else None
    finally:
        backend.close()  # vLLM: stops the engine's processes
    if args.json:
        print(json.dumps({"epochs": [asdict(r) for r in rows], **({"snapshot": snap} if snap else {})}, default=str, indent=2))
    else:
        print(render_rows(rows) + ("\n\n" + render_snapshot(snap) if snap else ""))
    return 0


def run_loop(p, world, model_path: Path, o: LoopOptions, step) -> list[EpochRow]:
    """Algorithm 1 (module docstring) on a running pipeline; returns the table's rows."""
    from llm_auction.cli import embedded
    from llm_auction.consumers.rollout_controller import RolloutController, RolloutRule
    from llm_auction.infra import warehouse

    s = p.settings
    # the smaller arm expects canary_queries x share queries; its maximum sample sits below that
    # (the hash splits users, not queries, exactly), so the point estimate decides within the budget
    per_arm = max(o.min_queries, int(0.7 * o.canary_queries * min(o.canary_share, 1 - o.canary_share)))
    rule = replace(RolloutRule.from_settings(s), canary_share=o.canary_share, min_queries=min(o.min_queries, per_arm), max_queries=per_arm)
    controller = RolloutController(s, p.bootstrap, p.client, p.producer, rule=rule, name="loop-controller").start()
    run = time.strftime("%H%M%S")
    rows: list[EpochRow] = []
    try:
        stable = controller.stable
        step("the stable policy serves test traffic", version=stable, queries=o.serve_queries)
        tag = f"loop{run}e0"
        embedded.serve(p, world, o.serve_queries, seed=s.seed, run_id=tag)
        m = warehouse.policy_metrics(p.client, [tag])
        rows.append(EpochRow(0, stable, "stable", "-", metrics=m.get(stable, {})))
        for t in range(1, o.epochs + 1):
            pctr, pctr_version = retrain_reward(p, o, step, t)
            manifest = irpo_epoch(p, world, model_path, stable, pctr, pctr_version, o, step, t)
            if manifest is None:
                rows.append(EpochRow(t, "-", "candidate", "no pairs: nothing published", pctr_version))
                continue
            decision, tags = canary(p, world, controller, manifest.version, o, step, t, run)
            m = warehouse.policy_metrics(p.client, tags)
            rows.append(EpochRow(t, stable, "stable", "stays" if decision != "promoted" else "retired", metrics=m.get(stable, {})))
            rows.append(EpochRow(t, manifest.version, "candidate", decision, pctr_version, metrics=m.get(manifest.version, {})))
            stable = controller.stable
            step("epoch done", epoch=t, decision=decision, stable=stable)
    finally:
        controller.close()
    return rows


def retrain_reward(p, o: LoopOptions, step, t: int):
    """(pCTR function, version) for IRPO's reward, after retraining pCTR on every impression in
    the warehouse: the promoted pCTR, or the simulator's exact probabilities (``--reward``)."""
    from llm_auction.infra import warehouse
    from llm_auction.models.pctr import PctrScorer
    from llm_auction.trainer import irpo
    from llm_auction.trainer.pctr_fit import NoTrainingRows, PctrConfig
    from llm_auction.trainer.pctr_publish import retrain_and_publish
    from llm_auction.trainer.registry import ModelRegistry

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
    current = registry.latest()
    if o.reward == "oracle" or (o.reward == "auto" and current is None):
        if o.reward == "auto":
            step("no pCTR version passed its promotion gate yet: this epoch's reward uses the simulator's exact click probabilities", epoch=t, min_auc=s.pctr_min_auc, min_holdout_clicks=s.pctr_min_holdout_clicks)
        return irpo.oracle_pctr(p.simulator), "oracle"
    if current is None:
        from llm_auction.cli import CliError

        raise CliError(f"no promoted pCTR version in {registry.dir} (AUC gate LLMA_PCTR_MIN_AUC={s.pctr_min_auc}); serve more queries (--serve-queries) or use --reward auto|oracle")
    return irpo.onnx_pctr(PctrScorer(current.artifact_path, encoder=p.encoder)), current.version


def irpo_epoch(p, world, model_path: Path, parent: str, pctr, pctr_version: str, o: LoopOptions, step, t: int):
    """One IRPO epoch from ``parent`` on the serving backend (no traffic flows meanwhile), announced."""
    from llm_auction.models.retrieval import candidate_picker
    from llm_auction.schemas.topics import POLICY_VERSIONS
    from llm_auction.trainer import irpo
    from llm_auction.trainer.irpo_config import IRPOConfig
    from llm_auction.trainer.registry import ModelRegistry

    s = p.settings
    registry = ModelRegistry(s.resolved_registry_dir(), "policy")
    cfg = IRPOConfig.cpu(queries=o.irpo_queries, query_offset=(t - 1) * o.irpo_queries, samples_per_query=o.samples, pairing=o.pairing, sft_weight=o.sft_weight, oracle=pctr_version == "oracle",
                         candidates_k=s.candidates_k, bid_seed=s.seed + t, sample_seed=s.seed + t, dpo_seed=s.seed + t)
    # The CPU preset's 2 pairs per step matter here twice: DPO runs beside the serving engine (4.6 GB
    # RSS with the engine's client), and a short epoch still takes several steps (with one step of 4
    # pairs, warmup left its only step at learning rate 0: the version was the parent).
    base = p.backend.config.base_version
    step("IRPO epoch: sample, score, pair, DPO", epoch=t, parent=parent, queries=cfg.queries, samples=cfg.samples_per_query, reward=pctr_version)
    result = irpo.run_epoch(
        cfg, world=world, backend=p.backend, base_model=model_path, registry=registry, pctr=pctr, pctr_version=pctr_version,
        parent=None if parent == base else parent, pick=candidate_picker(cfg.candidates_k, p.encoder),
        announcer=lambda m: irpo.announce(registry, m, p.producer, POLICY_VERSIONS),
    )
    mt = result.metrics
    step("IRPO epoch done", epoch=t, version=result.manifest.version if result.manifest else None, pairs=mt.get("pairs"),
         mean_reward=round(mt.get("mean_reward", float("nan")), 2), **{f"{k}_s": round(v, 1) for k, v in result.stage_s.items()})
    return result.manifest


def canary(p, world, controller, version: str, o: LoopOptions, step, t: int, run: str) -> tuple[str, list[str]]:
    """Canary ``version`` until the controller decides or the budget ends; (decision, replay tags)."""
    from llm_auction.cli import embedded

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
        tag = f"loop{run}e{t}c{len(tags)}"
        embedded.serve(p, world, n, seed=p.settings.seed + 1000 * t + len(tags), run_id=tag, show_progress=False)
        tags.append(tag)
        sent += n
        made = controller.step()
        if made is not None and made.state in ("promoted", "rolled_back"):
            step("controller decided", epoch=t, state=made.state, reason=made.reason)
            return made.state, tags
    return "undecided", tags


def render_rows(rows: list[EpochRow]) -> str:
    from llm_auction.cli.monitor import render_table

    flat = [{"epoch": r.epoch, "version": r.version, "role": r.role, "decision": r.decision, "reward_model": r.reward_model, **r.metrics} for r in rows]
    return render_table(flat, COLUMNS, left=frozenset({"version", "role", "decision"}))
