"""Mechanisms side by side through the real pipeline (``llm-auction eval``): read :func:`run_eval` top to bottom.

The paper's Table 2 and Figure 4, recomputed here. One process on the embedded defaults, like the
loop (chdb admits one process per folder):

1. **serve**: for each mechanism (``pretrained``, ``mosaic:20``, ``slot``, ``policy:<version>``:
   ``llm_auction.mechanisms``) a rollout event on the evaluation's own rollout topic routes every
   user to it, and the same test queries with the same freshly drawn bids (one seed) are replayed
   through broker -> responder -> user simulator -> sink; each mechanism's replay has its own run
   id, so its answers are found in ClickHouse by query id;
2. **figures**: every figure is recomputed from the events in ClickHouse
   (``infra.warehouse.answer_rows``: the monitor's definitions), and the same stored answers are
   rescored by the held-out judge (``trainer.evaluation.held_out_judge``); per mechanism the means
   with 95% bootstrap intervals over queries and the paired difference against ``pretrained``
   (:mod:`.eval_figures`);
3. **properties**: per policy version (and the base) the bid sweeps of section 5.4 (monotonicity,
   continuity, first-price incentives: ``trainer.properties``), the slot auction's step beside them;
4. **report**: ``eval.json``, ``eval.md`` and the PNGs (:mod:`.eval_report`).

Each stage writes its result under ``<out>/stages/`` and a rerun with the same options skips the
stages already there (resumable: the warehouse keeps the served events). The evaluation's
routing never touches ``auction.rollout``, so live responders keep serving what they served.

Honesty rules: the queries come from one split (``test`` by default, ``validation`` for tuning);
a policy version whose manifest (or an ancestor's) lists any of these queries as trained on is
refused with the overlap named (:func:`trained_on_overlap`).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from llm_auction.logs import log_event
from llm_auction.schemas.topics import EVAL_ROLLOUT

from . import embedded

log = logging.getLogger("llm_auction.eval")
Step = Callable[..., None]


@dataclass
class EvalOptions:
    """What one evaluation does; ``llm-auction eval``'s flags are generated from these fields (``--quick``: :meth:`quick`)."""

    queries: int = field(default=24, metadata={"help": "queries of the split every mechanism answers (the same queries and bids for all)"})
    mechanisms: list[str] = field(default_factory=lambda: ["pretrained", "mosaic:20", "slot"], metadata={
        "help": "baseline mechanisms: pretrained, mosaic[:N], slot, policy:<version> (docs/mechanisms.md)"})
    policies: list[str] = field(default_factory=lambda: ["latest"], metadata={
        "help": "LLM-Auction policy versions to add as policy:<version>: names, 'latest' (the newest of the registry) or 'none'"})
    split: Literal["test", "validation"] = field(default="test", metadata={"help": "world split the queries come from (validation: for choosing presets)"})
    seed: int = field(default=20251211, metadata={"help": "seed of the bids drawn for the replay (the same for every mechanism)"})
    reward: Literal["auto", "pctr", "oracle"] = field(default="auto", metadata={
        "help": "the served pCTR that mosaic selects and slot ranks with: the promoted pCTR version, the simulator's exact "
                "probabilities, or auto (pCTR when one is promoted, else the oracle; the report says which)"})
    monotonicity_queries: int = field(default=4, metadata={"help": "queries of the monotonicity sweep (one ad each, its bid at every level; 0: skip)"})
    bid_levels: list[int] = field(default_factory=lambda: [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100], metadata={
        "help": "bid levels of the monotonicity sweep (the paper's)"})
    continuity_step: int = field(default=10, metadata={"help": "bids of the continuity sweep: 1, then every STEP up to 100 (the paper: 1)"})
    continuity_samples: int = field(default=4, metadata={"help": "answers per bid of the continuity sweep (the paper: 200; 0: skip)"})
    value: float = field(default=60.0, metadata={"help": "the advertiser's value per click for the incentive analysis"})

    def __post_init__(self) -> None:
        problems = [f"{k} must be >= {lo}" for k, lo in (("queries", 2), ("monotonicity_queries", 0), ("continuity_step", 1), ("continuity_samples", 0))
                    if getattr(self, k) < lo]
        if not self.mechanisms and self.policies in ([], ["none"]):
            problems.append("nothing to evaluate: give --mechanisms or --policies")
        if any(not 1 <= b <= 100 for b in self.bid_levels) or len(set(self.bid_levels)) < 2:
            problems.append("bid_levels: at least two distinct bids in 1..100")
        if problems:
            raise ValueError("eval options: " + "; ".join(problems))

    @classmethod
    def quick(cls, **overrides: Any) -> "EvalOptions":
        """``--quick``: every stage on a few queries (with the tiny model, about a minute)."""
        return cls(**{**dict(queries=6, mechanisms=["pretrained", "mosaic:3", "slot"], monotonicity_queries=2, bid_levels=[1, 50, 100],
                             continuity_step=25, continuity_samples=2), **overrides})

    def continuity_bids(self) -> list[int]:
        return sorted({1, *range(self.continuity_step, 101, self.continuity_step)})


def log_step(msg: str, **fields: Any) -> None:
    log_event(log, msg, **fields)


# -- which policies, and may they be evaluated on these queries -------------------------------------------------


def resolve_policies(names: list[str], registry) -> list[str]:
    """The policy versions ``names`` asks for (``latest``: the registry's newest, none when it is empty; ``none``: none)."""
    out: list[str] = []
    for n in names:
        if n == "none":
            continue
        if n == "latest":
            m = registry.latest()
            if m is not None:
                out.append(m.version)
            continue
        try:
            registry.get(n)
        except FileNotFoundError:
            raise ValueError(f"policy version {n!r} is not in {registry.dir}") from None
        out.append(n)
    return list(dict.fromkeys(out))


def trained_on_overlap(registry, world, version: str, query_ids: set[str]) -> dict[str, list[str]]:
    """Per version in ``version``'s lineage, the world query ids of ``query_ids`` its manifest's data
    window lists as trained on (its split's records from ``query_offset``, ``queries`` of them)."""
    overlap: dict[str, list[str]] = {}
    m = registry.get(version)
    while m is not None:
        w = m.data_window or {}
        if w.get("split"):
            start = int(w.get("query_offset", 0))
            ids = {r.query_id for r in list(world.records(w["split"]))[start : start + int(w.get("queries", 0))]}
            if ids & query_ids:
                overlap[m.version] = sorted(ids & query_ids)
        m = registry.get(m.parent) if m.parent else None
    return overlap


# -- the run -----------------------------------------------------------------------------------------------------


def run_eval(settings, o: EvalOptions, out: Path, *, step: Step = log_step) -> dict[str, Any]:
    """Serve, figure, sweep and report (module docstring); returns the report's JSON object."""
    from llm_auction.models.backends import open_backend
    from llm_auction.producers.replay import ReplayConfig, replay_events
    from llm_auction.trainer.registry import ModelRegistry
    from llm_auction.trainer.reward import open_reward

    from . import eval_figures, eval_report

    stages = out / "stages"
    stages.mkdir(parents=True, exist_ok=True)
    world = embedded.prepare_world(settings, step)
    registry = ModelRegistry(settings.resolved_registry_dir(), "policy")
    policies = resolve_policies(o.policies, registry)
    arms = list(dict.fromkeys([*o.mechanisms, *(f"policy:{v}" for v in policies)]))
    replay = ReplayConfig(split=o.split, limit=o.queries, seed=o.seed, run_id=eval_figures.QUERIES_RUN, loop=True)
    queries = list(replay_events(world, replay))
    if len(queries) < o.queries:
        raise ValueError(f"the world's {o.split} split has no queries (a world from before the validation split? regenerate it)")
    world_ids = {q.query_id.split(".")[0] for q in queries}
    for v in policies:
        if overlap := trained_on_overlap(registry, world, v, world_ids):
            raise ValueError(f"policy {v} was trained on {sum(map(len, overlap.values()))} of the {o.split} queries "
                             f"({', '.join(f'{k}: {ids[:3]}...' for k, ids in overlap.items())}): refusing to report on them")
    fingerprint = {**asdict(o), "arms": arms, "world": str(world.root)}
    _check_resume(stages, fingerprint)
    step("evaluating", arms=arms, queries=o.queries, split=o.split, out=str(out))

    model_path = embedded.prepare_model(settings, step)
    backend = open_backend(settings, model=model_path)
    try:
        from llm_auction.models.encoder import load_encoder

        encoder = load_encoder()  # one per process: the pipeline's services share it
        served = open_reward(o.reward, settings=settings, encoder=encoder)
        step("served pCTR for mosaic and slot", reward=served.version)
        with embedded.pipeline(settings, backend, step, score=served.score, rollout_topic=EVAL_ROLLOUT) as p:
            runs = {arm: serve_arm(p, world, registry, arm, o, stages, step) for arm in arms}
            rows = _stage(stages, "figures", lambda: eval_figures.answers(p.client, runs, settings, encoder, queries), step)
        props = _stage(stages, "properties", lambda: properties(backend, settings, encoder, served, queries, policies, o, step, rows), step) if _sweeps(o) else {}
    finally:
        backend.close()
    report = eval_report.build(rows, props, o, arms=arms, served=served.version, settings=settings)
    eval_report.write(report, rows, props, out)
    step("report written", json=str(out / "eval.json"), md=str(out / "eval.md"))
    return report


def _check_resume(stages: Path, fingerprint: dict[str, Any]) -> None:
    """A stage folder belongs to one set of options: another set is refused, not mixed in."""
    f = stages / "options.json"
    if f.exists() and json.loads(f.read_text()) != json.loads(json.dumps(fingerprint)):
        raise ValueError(f"{stages.parent} holds an evaluation with other options: use another --out or remove it")
    f.write_text(json.dumps(fingerprint, indent=2) + "\n")


def _stage(stages: Path, name: str, compute: Callable[[], Any], step: Step) -> Any:
    """``compute()``'s JSON-able result, kept as ``stages/<name>.json``; read back when it is there."""
    f = stages / f"{_safe(name)}.json"
    if f.exists():
        step("stage already done, reused", stage=name)
        return json.loads(f.read_text())
    result = compute()
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=float) + "\n")
    tmp.replace(f)
    return result


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def _sweeps(o: EvalOptions) -> bool:
    return o.monotonicity_queries > 0 or o.continuity_samples > 0


def serve_arm(p: embedded.Pipeline, world, registry, arm: str, o: EvalOptions, stages: Path, step: Step) -> str:
    """Route every user to ``arm`` and replay the queries through the pipeline; returns the run id."""

    def serve() -> dict[str, Any]:
        from llm_auction.infra import warehouse
        from llm_auction.producers.versions import announce
        from llm_auction.schemas import RolloutEvent, encode

        # one run id per attempt: an attempt cut short leaves answers under its own id, never mixed with the one kept
        run_id = f"eval-{_safe(arm).replace('.', '-')}-{uuid.uuid4().hex[:6]}"
        kind, _, version = arm.partition(":")
        if kind == "policy":
            # sent even if announced before: this process's broker may be a new one (the embedded broker is memory only)
            announce(registry, registry.get(version), p.producer, again=True)
            if not p.control.wait_version_read(version, timeout_s=120):
                raise TimeoutError(f"the responder did not read the announcement of {version}")
        event = RolloutEvent(event_id=RolloutEvent.decision_id(arm, None, "promoted", 0.0, run_id + str(o.seed)), stable_version=arm,
                             state="promoted", decided_by="eval", reason=f"evaluation: every user to {arm}")
        p.producer.send(EVAL_ROLLOUT, key=b"eval", value=encode(event))
        p.producer.flush(timeout=30)
        if not p.control.wait_read(event.event_id, timeout_s=60):
            raise TimeoutError(f"the responder did not read the evaluation's routing to {arm}")
        step("serving", arm=arm, queries=o.queries)
        embedded.serve(p, world, o.queries, seed=o.seed, run_id=run_id, split=o.split)
        served = warehouse.policy_metrics(p.client, [run_id])
        if set(served) != {arm}:  # checked before the stage is kept: a rerun serves it again
            raise RuntimeError(f"the answers to {arm}'s replay came from {sorted(served)}: the evaluation's routing did not hold")
        return {"run_id": run_id}

    return _stage(stages, f"serve-{arm}", serve, step)["run_id"]


def continuity_pair(shown, rows, seed: int):
    """The continuity sweep's query and ad: the first query whose pretrained answer exposed an ad,
    with that ad (a curve of an ad the policy never writes is flat at 0 and shows nothing), else
    the first query and a seeded candidate."""
    import random

    from .eval_figures import QUERIES_RUN, replay_key

    by_key = {replay_key(q.query_id, QUERIES_RUN): q for q in shown}
    for r in rows:
        if r["arm"] == "pretrained" and r.get("exposed_ad_ids") and r["key"] in by_key:
            q = by_key[r["key"]]
            ad = next((a for a in r["exposed_ad_ids"] if q.candidate(a) is not None), None)
            if ad is not None:
                return q, ad
    return shown[0], random.Random(seed).choice(list(shown[0].candidates.ad_ids))


def properties(backend, settings, encoder, served, queries, policies: list[str], o: EvalOptions, step: Step, rows=()) -> dict[str, Any]:
    """Section 5.4 per version (the base and each policy): monotonicity over ``o.bid_levels``, the
    continuity curve over ``o.continuity_bids()`` (query and ad: :func:`continuity_pair` from the
    figures' ``rows``), first-price incentives from it, and the slot auction's step on the same
    query and ad (click probabilities: the training simulator's)."""

    from llm_auction.mechanisms.slot import pre_generation_ctr, rank
    from llm_auction.models.retrieval import candidate_picker
    from llm_auction.models.user_sim import make_user_simulator
    from llm_auction.schemas import Candidates
    from llm_auction.trainer.properties import continuity, incentives, monotonicity, step_curve
    from llm_auction.trainer.reward import oracle_pctr

    click = oracle_pctr(make_user_simulator("embedding", seed=settings.seed, encoder=encoder))
    pick = candidate_picker(settings.candidates_k, encoder)
    shown = [q.model_copy(update={"candidates": Candidates.of(pick(q))}) if pick else q for q in queries]
    sweep_q, ad = continuity_pair(shown, rows, o.seed)
    bids = o.continuity_bids()
    out: dict[str, Any] = {"query_id": sweep_q.query_id, "ad_id": ad, "continuity_bids": bids, "bid_levels": o.bid_levels, "versions": {}}
    base = settings.policy_version
    for version in [base, *policies]:
        step("property sweeps", version=version)
        v: dict[str, Any] = {}
        if o.monotonicity_queries:
            m = monotonicity(backend, version, shown[: o.monotonicity_queries], click, bids=o.bid_levels, seed=o.seed)
            v["spearman_bid_itctr"] = m.spearman
            v["monotonicity"] = m.by_bid.to_dict(orient="list")
        if o.continuity_samples:
            c = continuity(backend, version, sweep_q, ad, click, bids=bids, samples=o.continuity_samples, smooth=3)
            v["continuity"] = c.curve.to_dict(orient="list")
            v["max_jump"], v["max_jump_at"] = c.max_jump, c.max_jump_at
            v["incentives"] = incentives(c.curve, o.value)
        out["versions"]["pretrained" if version == base else version] = v
    # the slot auction on the same query and ad: a step where its bid x pCTR passes the best rival's
    pre = pre_generation_ctr(served.score)([sweep_q])[0]
    rival = max((b * q for a, b, q in rank(sweep_q, pre) if a != ad), default=0.0)
    stand_in = f"{sweep_q.query} @{sweep_q.candidate(ad).title}@[{ad}]"
    p_shown = click([(sweep_q, stand_in, [ad])])[0][ad]
    out["slot_step"] = step_curve(bids, rival, pre[ad], p_shown).to_dict(orient="list")
    return out


__all__ = ["EVAL_ROLLOUT", "EvalOptions", "resolve_policies", "run_eval", "serve_arm", "trained_on_overlap"]
