"""``llm-auction irpo run-epoch|evaluate``: parse, call the epoch builder or the evaluation, print JSON.

``run-epoch``'s flags are generated from :class:`~llm_auction.trainer.irpo_config.IRPOConfig`
(shared with ``serve trainer``: :func:`add_epoch_arguments`, :func:`epoch_config`); it runs
:func:`~llm_auction.trainer.epoch_setup.run_configured_epoch`, then announces the version through
``producers.versions``. ``evaluate`` samples versions on held-out queries (``trainer.evaluation``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm_auction.cli.args import add_config_arguments, add_out, config_from_args

REGISTRY_DEFAULT = "LLMA_REGISTRY_DIR, else <LLMA_DATA_DIR>/registry"
MERGE_HELP = "sample from a LoRA version merged into the base weights (default: on for vLLM on a CPU, which serves adapters slower)"
RUN_TIME = {"backend": "vLLM where importable, else transformers", "candidates_k": "LLMA_CANDIDATES_K"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("irpo", help="run an IRPO epoch: sample, score (Eq. 8), pair, DPO on a LoRA adapter, publish a policy version",
                       description="IRPO (paper Algorithm 1): train the Ad-LLM policy against the Eq. 8 reward, one epoch at a time.")
    cmds = p.add_subparsers(dest="irpo_command", metavar="ACTION")
    r = cmds.add_parser("run-epoch", help="one epoch from the current policy version to a new one", description=(
        "Draw fresh bids for world queries of the train split, sample M answers per query from the current policy (or --policy) "
        "through the serving backend with the responder's candidate narrowing, score each with Eq. 8 (--reward), pair the best "
        "answer with those more than --delta-th below it, run DPO (TRL) on a LoRA adapter whose reference is the starting policy, "
        "publish the adapter with its audit files (irpo_samples.parquet, irpo_pairs.parquet) as a new policy version, and announce "
        "it on auction.policy-versions when a broker is configured. Prints the manifest as JSON."))
    add_epoch_arguments(r)
    r.add_argument("--policy", default=None, help="policy version to start from (default: the latest promoted one, else 'base')")
    r.add_argument("--pctr", default=None, help="pCTR version to score with (default: the latest promoted one)")
    r.add_argument("--bootstrap", default=None, help="Kafka bootstrap to announce on (default: LLMA_KAFKA_BOOTSTRAP; unset: not announced)")
    r.set_defaults(handler=_run_epoch)

    e = cmds.add_parser("evaluate", help="mean reward and revenue per query of fresh answers to held-out test queries", description=(
        "Sample --samples fresh answers per query from --policy (and --baseline) for the first --queries queries of the world's "
        "test split, with fresh bids and the responder's candidate narrowing, and score them with Eq. 8. Prints JSON: mean reward, "
        "expected revenue per query (bid x click probability over exposed ads), format-error rate, ads per answer, each with a "
        "bootstrap 95% interval over queries, and the paired difference to the baseline."))
    e.add_argument("--policy", required=True, help="policy version to evaluate, or 'base'")
    e.add_argument("--baseline", default=None, help="a second version (or 'base') sampled on the same queries and bids")
    e.add_argument("--queries", type=int, default=40, help="test queries (default: 40)")
    e.add_argument("--samples", type=int, default=4, help="answers per query (default: 4)")
    e.add_argument("--reward", choices=("pctr", "oracle", "auto"), default="pctr", help="click probabilities of Eq. 8 (trainer/reward.py; default: pctr)")
    e.add_argument("--oracle", dest="reward", action="store_const", const="oracle", help="shorthand for --reward oracle")
    e.add_argument("--pctr", default=None, help="pCTR version to score with (default: the latest promoted one)")
    e.add_argument("--seed", type=int, default=1000, help="bid and sampling seed, apart from the epochs' seeds (default: 1000)")
    e.add_argument("--backend", choices=("transformers", "vllm"), default=None, help=f"serving backend that samples (default: {RUN_TIME['backend']})")
    e.add_argument("--candidates-k", type=int, default=None, help="candidates shown per query (default: LLMA_CANDIDATES_K; 0: all)")
    e.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit (default: IRPOConfig's)")
    e.add_argument("--lam", type=float, default=None, help="lambda of Eq. 8 for the reported reward (default: IRPOConfig's; revenue does not depend on it)")
    _add_common(e)
    e.set_defaults(handler=_evaluate)
    p.set_defaults(handler=lambda args: p.print_help() or 0)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="base model folder (default: LLMA_ADLLM_MODEL, else <LLMA_DATA_DIR>/models/smollm2)")
    p.add_argument("--merge-lora", action=argparse.BooleanOptionalAction, default=None, help=MERGE_HELP)
    p.add_argument("--world", type=Path, default=None, help="world folder (default: <LLMA_DATA_DIR>/world)")
    add_out(p, "registry root", REGISTRY_DEFAULT)


def add_epoch_arguments(p: argparse.ArgumentParser) -> None:
    """An epoch's flags, shared by ``irpo run-epoch`` and ``serve trainer``: one per ``IRPOConfig`` field, and a few more."""
    from llm_auction.trainer.irpo_config import IRPOConfig

    add_config_arguments(p, IRPOConfig, RUN_TIME)
    p.add_argument("--oracle", dest="reward", action="store_const", const="oracle", default=argparse.SUPPRESS, help="shorthand for --reward oracle")
    p.add_argument("--paper", action="store_true", help="start from IRPOConfig.paper() (the paper's GPU values) instead of IRPOConfig.cpu()")
    p.add_argument("--seed", type=int, default=None, help="sets bid_seed, sample_seed and dpo_seed at once (the fields' own flags win)")
    _add_common(p)


def epoch_config(args, settings):
    """The epoch's ``IRPOConfig``: the preset (``--paper`` or CPU) with the flags given; run-time
    defaults: the backend (vLLM where importable), ``LLMA_CANDIDATES_K`` (0: all), ``--seed``."""
    from llm_auction.trainer.irpo_config import IRPOConfig

    fallbacks = {"backend": default_backend(), "candidates_k": settings.candidates_k or None}  # 0: every candidate
    if args.seed is not None:
        fallbacks |= {"bid_seed": args.seed, "sample_seed": args.seed, "dpo_seed": args.seed}
    if getattr(args, "lora_r", None) is not None and not hasattr(args, "lora_alpha"):
        fallbacks["lora_alpha"] = 2 * args.lora_r
    if getattr(args, "candidates_k", None) == 0:
        args.candidates_k = None
    return config_from_args(args, IRPOConfig, IRPOConfig.paper if args.paper else IRPOConfig.cpu, **fallbacks)


def default_backend() -> str:
    """vLLM (the serving engine) where it is importable, else transformers."""
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def open_world(args, s):
    from llm_auction.producers.world import World

    root = args.world or s.data_dir / "world"
    if not (root / "manifest.json").exists():
        raise FileNotFoundError(f"no world at {root} (make one: `llm-auction world --out DIR`, or pass --world)")
    return World(root)


def _run_epoch(args) -> int:
    from llm_auction.cli.args import registry_root
    from llm_auction.models.encoder import load_encoder
    from llm_auction.producers.versions import announcer
    from llm_auction.schemas.settings import get_settings
    from llm_auction.trainer.epoch_setup import run_configured_epoch
    from llm_auction.trainer.registry import ModelRegistry

    s = get_settings()
    cfg = epoch_config(args, s)
    registry = ModelRegistry(registry_root(args), "policy")
    parent = None if args.policy == "base" else args.policy or getattr(registry.latest(), "version", None)
    result = run_configured_epoch(cfg, world=open_world(args, s), model=args.model or s.resolved_adllm_model(), registry=registry, parent=parent,
                                  pctr_version=args.pctr, encoder=load_encoder(), settings=s, merge_lora=args.merge_lora)
    if result.manifest is None:
        print(json.dumps({"published": None, "reward": result.reward_version, "metrics": result.metrics}, indent=2, default=str))
        return 0
    send = announcer(registry, s, args.bootstrap)
    announced = bool(send(result.manifest)) if send else False
    print(json.dumps({**result.manifest.model_dump(mode="json"), "path": str(result.manifest.path), "announced": announced}, indent=2))
    return 0


def _evaluate(args) -> int:
    from llm_auction.cli.args import registry_root
    from llm_auction.models.encoder import load_encoder
    from llm_auction.schemas.settings import get_settings
    from llm_auction.trainer.evaluation import evaluate_versions
    from llm_auction.trainer.irpo_config import IRPOConfig
    from llm_auction.trainer.registry import ModelRegistry

    s = get_settings()
    given = {k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("lam", args.lam)) if v is not None}
    k = s.candidates_k if args.candidates_k is None else args.candidates_k
    cfg = IRPOConfig(queries=args.queries, split="test", bid_seed=args.seed, sample_seed=args.seed, candidates_k=k or None,
                     backend=args.backend or default_backend(), reward=args.reward, **given)
    report = evaluate_versions(cfg, [v for v in (args.policy, args.baseline) if v is not None], world=open_world(args, s), model=args.model or s.resolved_adllm_model(),
                               registry=ModelRegistry(registry_root(args), "policy"), encoder=load_encoder(), settings=s, samples=args.samples,
                               pctr_version=args.pctr, merge_lora=args.merge_lora)
    print(json.dumps(report, indent=2))
    return 0
