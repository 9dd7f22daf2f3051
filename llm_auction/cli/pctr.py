"""``llm-auction pctr``: train, evaluate and list pCTR reward-model versions.

``train`` reads impressions (a file, or the warehouse), warm-starts from the latest promoted
version, fits, exports a verified ONNX file and publishes it to the registry with its metrics;
``eval`` scores impressions with a published ONNX model through onnxruntime (what the auction
runs), so the reported AUC is the served model's, not the torch copy's.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from llm_auction.cli.args import add_encoder, add_out, add_seed, registry_root

REGISTRY_DEFAULT = "LLMA_REGISTRY_DIR, else <LLMA_DATA_DIR>/registry"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pctr",
        help="train / evaluate / list the pCTR reward model (Eq. 3, ONNX, model registry)",
        description="The pCTR reward model: fit on impressions, export to ONNX, publish versions to the registry.",
    )
    cmds = p.add_subparsers(dest="pctr_command", metavar="ACTION")

    t = cmds.add_parser(
        "train",
        help="fit on impressions and publish a new version",
        description=(
            "Fit the pCTR network on impressions (one row per exposed ad: query_id, user_id, query, text, "
            "ad_id, clicked), warm-started from the latest promoted version, export it to ONNX (verified "
            "against torch), and publish it to the registry. Prints the manifest as JSON."
        ),
    )
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--impressions", type=Path, help="impressions file (.parquet, .jsonl or .csv)")
    src.add_argument("--from-clickhouse", action="store_true", help="read impressions from the warehouse (LLMA_CLICKHOUSE_URL)")
    t.add_argument("--since", type=datetime.fromisoformat, default=None, help="with --from-clickhouse: only answers at or after this ISO time")
    t.add_argument("--limit", type=int, default=None, help="with --from-clickhouse: at most this many rows")
    add_out(t, "registry root", REGISTRY_DEFAULT)
    t.add_argument("--epochs", type=int, default=8, help="max epochs (early stopping on the holdout; default 8)")
    t.add_argument("--holdout", type=float, default=0.1, help="share of queries held out for evaluation (default 0.1)")
    add_seed(t)
    t.add_argument("--threads", type=int, default=None, help="torch threads for the fit (default 1, PctrConfig's; 0: torch's default)")
    t.add_argument("--cold", action="store_true", help="train from scratch instead of warm-starting from the latest promoted version")
    t.add_argument("--min-auc", type=float, default=None, help="holdout AUC needed to publish as promoted (default: LLMA_PCTR_MIN_AUC)")
    add_encoder(t, cache_use=", loaded and saved")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(handler=_train)

    e = cmds.add_parser(
        "eval",
        help="score impressions with a published version (onnxruntime) and print metrics",
        description="AUC, log loss and calibration of a published ONNX model on an impressions file, as JSON.",
    )
    e.add_argument("--version", default=None, help="version to evaluate, like pctr-0003 (default: the latest promoted)")
    e.add_argument("--impressions", type=Path, required=True, help="impressions file (.parquet, .jsonl or .csv)")
    add_out(e, "registry root", REGISTRY_DEFAULT)
    add_encoder(e, default="the model's, else the bundled MiniLM")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(handler=_eval)

    ls = cmds.add_parser("list", help="list published versions", description="Published pCTR versions, oldest first, as JSON lines.")
    add_out(ls, "registry root", REGISTRY_DEFAULT)
    ls.set_defaults(handler=_list)

    s = cmds.add_parser(
        "synth",
        help="write synthetic impressions from a known click function (to try train/eval)",
        description="Impressions whose clicks are drawn from a known function of query/ad-title relevance and per-ad/user biases; the true probability is the click_probability column.",
    )
    add_out(s, "output file (.parquet, .jsonl or .csv)")
    s.add_argument("--queries", type=int, default=1000, help="distinct queries (default 1000)")
    s.add_argument("--answers-per-query", type=int, default=2, help="responses per query (default 2)")
    s.add_argument("--replays", type=int, default=4, help="times each response is served, fresh clicks each (default 4)")
    add_seed(s)
    add_encoder(s)
    s.set_defaults(handler=_synth)
    p.set_defaults(handler=lambda args: p.print_help() or 0)


def read_impressions(path: Path):
    import pandas as pd

    from llm_auction.cli import CliError

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return pd.read_json(path, lines=True)
    if suffix == ".csv":
        return pd.read_csv(path)
    raise CliError(f"{path}: unknown impressions format {suffix!r} (use .parquet, .jsonl or .csv)")


def write_impressions(df, path: Path) -> None:
    from llm_auction.cli import CliError

    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        df.to_parquet(path, index=False)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        df.to_json(path, orient="records", lines=True, date_format="iso")
    elif suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        raise CliError(f"{path}: unknown impressions format {suffix!r} (use .parquet, .jsonl or .csv)")


def _encoder(args, settings):
    from llm_auction.models.encoder import load_encoder

    enc = load_encoder(args.encoder)
    cache = args.embedding_cache or settings.data_dir / "pctr" / "encoder-cache.npz"
    n = enc.load_cache(cache)
    return enc, cache, n


def _from_clickhouse(args, settings):
    from llm_auction.cli import CliError

    try:
        from llm_auction.infra.clickhouse import get_client
        from llm_auction.infra.warehouse import impressions
    except ImportError as e:  # the warehouse lands separately; say so instead of a traceback
        raise CliError(f"--from-clickhouse: the warehouse module is not available ({e})") from None
    url = settings.resolved_clickhouse_url()
    client = get_client(url)
    try:
        return impressions(client, since=args.since, limit=args.limit)
    finally:
        # An embedded (chdb) engine is per process and may be shared with the caller: leave it open.
        if not url.startswith("chdb:"):
            client.close()


def _train(args) -> int:
    from llm_auction.cli import CliError
    from llm_auction.schemas.settings import get_settings
    from llm_auction.trainer.pctr_fit import PctrConfig
    from llm_auction.trainer.pctr_publish import retrain_and_publish
    from llm_auction.trainer.registry import ModelRegistry

    s = get_settings()
    if args.since is not None and not args.from_clickhouse:
        raise CliError("--since only applies with --from-clickhouse")
    df = _from_clickhouse(args, s) if args.from_clickhouse else read_impressions(args.impressions)
    if len(df) == 0:
        raise CliError("no impressions to train on")
    config = PctrConfig(epochs=args.epochs, holdout_fraction=args.holdout, seed=s.seed if args.seed is None else args.seed, threads=args.threads, progress=not args.quiet)
    encoder, cache, n_cached = _encoder(args, s)
    manifest = retrain_and_publish(
        df, ModelRegistry(registry_root(args), "pctr"), encoder, config,
        cold=args.cold,
        min_auc=args.min_auc if args.min_auc is not None else s.pctr_min_auc,
        promote_margin=s.pctr_promote_margin,
        min_holdout_clicks=s.pctr_min_holdout_clicks,
        extra={"encoder_cache_hits_before": n_cached},
        encoder_cache=cache,
    )
    print(json.dumps({**manifest.model_dump(mode="json"), "path": str(manifest.path)}, indent=2))
    return 0


def _eval(args) -> int:
    from llm_auction.cli import CliError
    from llm_auction.models.pctr import PctrScorer
    from llm_auction.schemas.settings import get_settings
    from llm_auction.trainer.pctr_fit import score_impressions
    from llm_auction.trainer.registry import ModelRegistry

    s = get_settings()
    registry = ModelRegistry(registry_root(args), "pctr")
    manifest = registry.get(args.version) if args.version else registry.latest(promoted_only=True)
    if manifest is None:
        raise CliError(f"registry {registry.dir}: no promoted version (train one with `llm-auction pctr train`)")
    df = read_impressions(args.impressions)
    side = json.loads((manifest.path / "model.json").read_text(encoding="utf-8")) if (manifest.path / "model.json").exists() else {}
    enc_path = args.encoder or (Path(side["encoder"]) if side.get("encoder") and Path(side["encoder"]).exists() else None)
    from llm_auction.models.encoder import load_encoder

    encoder = load_encoder(enc_path)
    cache = args.embedding_cache or s.data_dir / "pctr" / "encoder-cache.npz"
    encoder.load_cache(cache)
    scorer = PctrScorer(manifest.artifact_path, encoder=encoder)
    metrics = score_impressions(scorer, df, progress=not args.quiet)
    encoder.save_cache(cache)
    print(json.dumps({"version": manifest.version, "providers": scorer.providers, "metrics": metrics}, indent=2))
    return 0


def _list(args) -> int:
    from llm_auction.trainer.registry import ModelRegistry

    for m in ModelRegistry(registry_root(args), "pctr").list():
        keep = {k: m.metrics.get(k) for k in ("auc", "log_loss", "calibration") if k in m.metrics}
        print(json.dumps({"version": m.version, "parent": m.parent, "created": m.created.isoformat(), "promoted": m.promoted, "n_train": m.n_train, "sha256": m.sha256, **keep}))
    return 0


def _synth(args) -> int:
    from llm_auction.schemas.settings import get_settings
    from llm_auction.trainer.pctr_synth import synthetic_impressions

    s = get_settings()
    encoder, cache, _ = _encoder(args, s)
    df = synthetic_impressions(
        encoder, n_queries=args.queries, answers_per_query=args.answers_per_query, replays=args.replays, seed=s.seed if args.seed is None else args.seed
    )
    write_impressions(df, args.out)
    encoder.save_cache(cache)
    print(json.dumps({"out": str(args.out), "rows": len(df), "ctr": round(float(df["clicked"].mean()), 4), "queries": int(df["query_id"].nunique())}))
    return 0
