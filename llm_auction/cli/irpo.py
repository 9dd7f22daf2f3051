"""``llm-auction irpo run-epoch`` and ``llm-auction policy list|show|announce``: the learning leg.

``run-epoch`` is a thin shell over :func:`llm_auction.trainer.epoch_setup.run_configured_epoch`
(the assembly the trainer service uses too): it opens the world, the serving backend with the
responder's candidate narrowing, the reward (the promoted pCTR version through onnxruntime, or the
user simulator's exact probabilities with ``--oracle``), runs one epoch from the current policy
version and prints the new version's manifest as JSON. :func:`add_epoch_arguments` and
:func:`epoch_config` are the epoch's flags, shared with ``serve trainer``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from llm_auction.cli.args import add_out

MERGE_HELP = ("sample from a LoRA version with its adapter merged into the base weights (a scratch full model); "
              "default: on for vLLM on a CPU, where it served adapters ~6x slower than the base")
REGISTRY_DEFAULT = "LLMA_REGISTRY_DIR, else <LLMA_DATA_DIR>/registry"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "irpo",
        help="run an IRPO epoch: sample, score (Eq. 8), pair, DPO on a LoRA adapter, publish a policy version",
        description="IRPO (paper Algorithm 1): train the Ad-LLM policy against the pCTR reward, one epoch at a time.",
    )
    cmds = p.add_subparsers(dest="irpo_command", metavar="ACTION")
    r = cmds.add_parser(
        "run-epoch",
        help="one epoch from the current policy version to a new one",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Draw fresh bids for world queries of the train split, sample M answers per query from the "
            "current policy (or --policy) through the serving backend with the responder's candidate "
            "narrowing, score each with Eq. 8 (pCTR from the promoted ONNX model, or --oracle), pair the "
            "best answer with those more than --delta-th below it, run DPO (TRL, beta 0.1) on a LoRA "
            "adapter whose reference is the starting policy, and publish the adapter with the audit files "
            "(irpo_samples.parquet, irpo_pairs.parquet) as a new policy version; announce it on "
            "auction.policy-versions when a broker is configured. Prints the manifest as JSON."
        ),
    )
    add_epoch_arguments(r)
    r.add_argument("--policy", default=None, help="policy version to start from (default: the latest promoted one, else 'base')")
    r.add_argument("--pctr", default=None, help="pCTR version to score with (default: the latest promoted one)")
    r.add_argument("--bootstrap", default=None, help="Kafka bootstrap to announce on (default: LLMA_KAFKA_BOOTSTRAP; unset: not announced)")
    r.set_defaults(handler=_run_epoch)

    e = cmds.add_parser(
        "evaluate",
        help="mean reward and revenue per query of fresh answers to held-out test queries",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Sample --samples fresh answers per query from --policy (and from --baseline, when given) for the "
            "first --queries queries of the world's test split, with fresh bids and the responder's candidate "
            "narrowing, and score them with Eq. 8. Prints JSON: mean reward, expected revenue per query "
            "(sum of bid x click probability over exposed ads: the paper's revenue without the click draw), "
            "format-error rate, ads per answer, each with a bootstrap 95% interval over queries, and the "
            "paired difference to the baseline."
        ),
    )
    e.add_argument("--policy", required=True, help="policy version to evaluate, or 'base'")
    e.add_argument("--baseline", default=None, help="a second version (or 'base') sampled on the same queries and bids")
    e.add_argument("--queries", type=int, default=40, help="test queries")
    e.add_argument("--samples", type=int, default=4, help="answers per query")
    e.add_argument("--oracle", action="store_true", help="score with the user simulator's exact click probabilities instead of pCTR")
    e.add_argument("--pctr", default=None, help="pCTR version to score with (default: the latest promoted one)")
    e.add_argument("--backend", choices=("transformers", "vllm"), default=default_backend(), help="serving backend that samples")
    e.add_argument("--model", type=Path, default=None, help="base model folder (default: LLMA_ADLLM_MODEL, else <LLMA_DATA_DIR>/models/smollm2)")
    e.add_argument("--merge-lora", action=argparse.BooleanOptionalAction, default=None, help=MERGE_HELP)
    e.add_argument("--world", type=Path, default=None, help="world folder (default: <LLMA_DATA_DIR>/world)")
    e.add_argument("--candidates-k", type=int, default=-1, help="candidates shown per query (default: LLMA_CANDIDATES_K; 0: all)")
    e.add_argument("--max-new-tokens", type=int, default=96, help="answer length limit")
    e.add_argument("--seed", type=int, default=1000, help="bid and sampling seed (keep it apart from the epochs' seeds)")
    e.add_argument("--lam", type=float, default=1.0, help="lambda of Eq. 8 for the reported reward (revenue does not depend on it)")
    add_out(e, "registry root", REGISTRY_DEFAULT)
    e.set_defaults(handler=_evaluate)
    p.set_defaults(handler=lambda args: p.print_help() or 0)

    q = sub.add_parser("policy", help="list / show / announce published policy versions; rollout / promote / rollback", description="Published Ad-LLM policy versions (the registry's policy kind).")
    pc = q.add_subparsers(dest="policy_command", metavar="ACTION")
    ls = pc.add_parser("list", help="versions, oldest first, as JSON lines")
    add_out(ls, "registry root", REGISTRY_DEFAULT)
    ls.set_defaults(handler=_list)
    sh = pc.add_parser("show", help="one version's manifest as JSON")
    sh.add_argument("version", help="like policy-0001")
    add_out(sh, "registry root", REGISTRY_DEFAULT)
    sh.set_defaults(handler=_show)
    an = pc.add_parser("announce", help="announce a version on auction.policy-versions (once; a repeat is a no-op)")
    an.add_argument("version", help="like policy-0001")
    an.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: LLMA_KAFKA_BOOTSTRAP)")
    add_out(an, "registry root", REGISTRY_DEFAULT)
    an.set_defaults(handler=_announce)
    from llm_auction.cli.policy import register_rollout  # rollout / promote / rollback (docs/rollout.md)

    register_rollout(pc)
    q.set_defaults(handler=lambda args: q.print_help() or 0)


def add_epoch_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that configure an epoch, shared by ``irpo run-epoch`` and ``serve trainer`` (:func:`epoch_config`)."""
    p.add_argument("--queries", type=int, default=32, help="queries in the offline set")
    p.add_argument("--offset", type=int, default=0, help="first query of the split to use")
    p.add_argument("--samples", type=int, default=5, help="M, answers sampled per query")
    p.add_argument("--oracle", action="store_true", help="reward with the user simulator's exact click probabilities instead of pCTR")
    p.add_argument("--backend", choices=("transformers", "vllm"), default=default_backend(),
                   help="serving backend that samples (vLLM where importable); it is closed before DPO starts")
    p.add_argument("--model", type=Path, default=None, help="base model folder (default: LLMA_ADLLM_MODEL, else <LLMA_DATA_DIR>/models/smollm2)")
    p.add_argument("--merge-lora", action=argparse.BooleanOptionalAction, default=None, help=MERGE_HELP)
    p.add_argument("--world", type=Path, default=None, help="world folder (default: <LLMA_DATA_DIR>/world)")
    p.add_argument("--candidates-k", type=int, default=-1, help="candidates shown per query (default: LLMA_CANDIDATES_K; 0: all)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="answer length limit when sampling")
    p.add_argument("--pairing", choices=("all", "worst"), default=None, help="'all' losers per query (the paper) or only the 'worst' one (default: the preset's, all)")
    p.add_argument("--delta-th", type=float, default=10.0, help="a loser's reward is more than this below the winner's")
    p.add_argument("--lam", type=float, default=1.0, help="lambda of Eq. 8, the weight of the ad-count and format-error penalty (the paper: 1)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of the LoRA weights, cosine, warmup 0.1 (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per DPO step (default: the preset's)")
    p.add_argument("--sft-weight", type=float, default=None, help="weight of the chosen answers' NLL added to the DPO loss (RPO; 0: pure DPO; default: the preset's)")
    p.add_argument("--dpo-epochs", type=float, default=None, help="passes over the pairs (default: the preset's)")
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank, alpha = 2r (a fresh adapter only; default: the preset's)")
    p.add_argument("--upper-layers", type=int, default=None, help="LoRA only on the top N decoder layers (a fresh adapter only; default: the preset's)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast during DPO (default: the preset's)")
    p.add_argument("--paper", action="store_true", help="start from IRPOConfig.paper() (GPU values: lr 1e-6, batch 64, bf16, all losers)")
    p.add_argument("--threads", type=int, default=None, help="torch threads during DPO")
    p.add_argument("--seed", type=int, default=0, help="bid, sampling and trainer seed")
    add_out(p, "registry root", REGISTRY_DEFAULT)


def default_backend() -> str:
    """vLLM (the serving engine) where it is importable, else transformers."""
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def _registry(args, kind: str = "policy"):
    from llm_auction.cli.args import registry_root
    from llm_auction.trainer.registry import ModelRegistry

    return ModelRegistry(registry_root(args), kind)


def epoch_config(args, settings):
    """The epoch's ``IRPOConfig`` from :func:`add_epoch_arguments`' flags: the preset (``--paper``:
    ``IRPOConfig.paper()``, else ``.cpu()``) with what the command line gives; validated on build."""
    from llm_auction.trainer.irpo_config import IRPOConfig

    k = settings.candidates_k if args.candidates_k < 0 else (args.candidates_k or None)
    fields = dict(
        queries=args.queries, query_offset=args.offset, samples_per_query=args.samples, oracle=args.oracle, backend=args.backend,
        candidates_k=k, max_new_tokens=args.max_new_tokens, delta_th=args.delta_th, lam=args.lam,
        threads=args.threads, bid_seed=args.seed, sample_seed=args.seed, dpo_seed=args.seed,
    )
    given = {"learning_rate": args.lr, "batch_size": args.batch_size, "num_epochs": args.dpo_epochs, "bf16": args.bf16, "sft_weight": args.sft_weight, "pairing": args.pairing}
    fields |= {name: v for name, v in given.items() if v is not None}
    if args.lora_r is not None:
        fields |= {"lora_r": args.lora_r, "lora_alpha": 2 * args.lora_r}
    if args.upper_layers is not None:
        fields["lora_top_layers"] = args.upper_layers
    return IRPOConfig.paper(**fields) if args.paper else IRPOConfig.cpu(**fields)


def _run_epoch(args) -> int:
    from llm_auction.cli.args import load_encoder
    from llm_auction.producers.world import World
    from llm_auction.schemas.settings import get_settings
    from llm_auction.trainer.epoch_setup import announcer, base_model_dir, run_configured_epoch

    s = get_settings()
    cfg = epoch_config(args, s)
    model = base_model_dir(args.model, s)
    world = World(args.world or s.data_dir / "world")
    registry = _registry(args)
    parent = args.policy
    if parent is None:
        latest = registry.latest()
        parent = latest.version if latest else None
    elif parent == "base":
        parent = None
    result = run_configured_epoch(
        cfg, world=world, model=model, registry=registry, parent=parent, pctr_version=args.pctr, encoder=load_encoder(), settings=s,
        merge_lora=args.merge_lora, announce=announcer(registry, s, args.bootstrap),
    )
    if result.manifest is None:
        print(json.dumps({"published": None, "metrics": result.metrics}, indent=2, default=str))
        return 0
    print(json.dumps({**result.manifest.model_dump(mode="json"), "path": str(result.manifest.path), "announced": result.announced}, indent=2))
    return 0


def _evaluate(args) -> int:
    from llm_auction.cli.args import load_encoder, registry_root
    from llm_auction.models.adllm import SamplingConfig
    from llm_auction.models.retrieval import candidate_picker
    from llm_auction.producers.world import World
    from llm_auction.schemas.settings import get_settings
    from llm_auction.trainer import irpo
    from llm_auction.trainer.epoch_setup import base_model_dir, load_version, open_backend, open_reward
    from llm_auction.trainer.irpo_config import IRPOConfig

    s = get_settings()
    k = s.candidates_k if args.candidates_k < 0 else (args.candidates_k or None)
    model = base_model_dir(args.model, s)
    registry = _registry(args)
    versions = [v for v in (args.policy, args.baseline) if v is not None]
    world = World(args.world or s.data_dir / "world")
    cfg = IRPOConfig(queries=args.queries, split="test", bid_seed=args.seed, candidates_k=k, max_new_tokens=args.max_new_tokens, lam=args.lam)
    encoder = load_encoder()
    pctr, pctr_version = open_reward(registry_root(args), args.pctr, encoder, args.oracle, s)
    queries = irpo.narrow(irpo.build_offline_set(world, cfg, irpo.epoch_bid_seed(cfg, "evaluate")), candidate_picker(k, encoder))
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens, seed=args.seed)
    backend = open_backend(args.backend, model, sampling, cfg.sample_batch_size, s)
    try:
        with tempfile.TemporaryDirectory(prefix="llma-merged-") as scratch:
            for v in versions:
                if v != "base":
                    load_version(backend, v, registry, model, args.merge_lora, Path(scratch))
            frames = {v: irpo.evaluate_policy(backend, queries, v if v != "base" else backend.config.base_version, pctr, m=args.samples, lam=cfg.lam) for v in versions}
    finally:
        backend.close()
    report = {"queries": len(queries), "samples": args.samples, "pctr_version": pctr_version, "candidates_k": k, "seed": args.seed, "lam": cfg.lam,
              "policies": {v: irpo.evaluation_summary(f) for v, f in frames.items()}}
    if args.baseline is not None:
        report["difference"] = irpo.paired_difference(frames[args.policy], frames[args.baseline])
    print(json.dumps(report, indent=2))
    return 0


def _list(args) -> int:
    for m in _registry(args).list():
        print(json.dumps({"version": m.version, "parent": m.parent, "created": m.created.isoformat(), "pctr_version": m.extra.get("pctr_version"),
                          "pairs": m.metrics.get("pairs"), "mean_reward": m.metrics.get("mean_reward"), "sha256": m.sha256, "path": str(m.path)}))
    return 0


def _show(args) -> int:
    m = _registry(args).get(args.version)
    print(json.dumps({**m.model_dump(mode="json"), "path": str(m.path)}, indent=2))
    return 0


def _announce(args) -> int:
    from llm_auction.cli import CliError
    from llm_auction.schemas.settings import get_settings
    from llm_auction.trainer.epoch_setup import announcer

    registry = _registry(args)
    send = announcer(registry, get_settings(), args.bootstrap)
    if send is None:
        raise CliError("no Kafka bootstrap (pass --bootstrap or set LLMA_KAFKA_BOOTSTRAP)")
    sent = send(registry.get(args.version))
    print(json.dumps({"version": args.version, "announced_now": sent}))
    return 0
