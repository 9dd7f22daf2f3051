"""pCTR benchmark: retraining time, ONNX scoring throughput, encoder throughput, and quality.

    .venv/bin/python bench/pctr.py [--impressions 100000] [--users 200] [--threads 1] [--source auto|simulator|known]

Impressions come from the user simulator (``llm_auction.models.user_sim``, ``embedding``
backend) when it is importable (``--source auto``): a synthetic world's queries, each answered
twice with 1-3 catalog ads (half among the 8 most relevant to the query, half random; 70% woven
into the answer, 30% appended below it), each answer served several times with fresh clicks
drawn by the simulator, whose exact click probabilities are the oracle. ``--source known`` uses
the known click function of ``llm_auction.trainer.pctr_synth`` instead.

Reported (and written to ``bench/results/pctr.json``):

- ``encoder_sentences_per_s``: MiniLM on fresh answer texts (no cache), batch 64;
- ``retrain_s_100k``: ``PctrTrainer.fit(df)`` end to end on the impressions (DataFrame in,
  evaluated best-epoch network out) with every text already in the encoder cache: what a
  retrain costs in the stream, where texts are encoded once as they arrive. With
  ``PctrConfig``'s one torch thread (``--threads``), again with torch's default threads, and
  warm-started from the first fit;
- ``onnx_rows_per_s``: onnxruntime on the exported head over 100,000 rows (embeddings gathered,
  ids hashed), the best of intra-op threads {1, default} x batch {1,000, 10,000} (all four are
  kept); ``scorer_rows_per_s`` the same through ``PctrScorer.score_rows`` with string ids;
  ``onnx_latency_ms_1row``;
- ``auc``, ``log_loss``, ``calibration`` (mean predicted / observed CTR) on the per-query
  holdout; ``oracle_auc`` (the true probabilities' AUC on the same draws: the ceiling) and
  ``calibration_ratio`` (mean predicted / mean true probability).

Encoded texts are cached in ``<LLMA_DATA_DIR>/bench/pctr-encoder-cache.npz``; the first run pays
the encoding (tens of thousands of sentences), later runs only the measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from llm_auction.logs import setup_logging  # noqa: E402
from llm_auction.trainer.pctr_synth import pick_ads  # noqa: E402
from llm_auction.models.encoder import TextEncoder  # noqa: E402
from llm_auction.models.pctr import PctrScorer, export_onnx  # noqa: E402
from llm_auction.schemas.catalog import load_catalog  # noqa: E402
from llm_auction.schemas.settings import get_settings  # noqa: E402
from llm_auction.trainer.pctr_fit import PctrConfig, PctrTrainer  # noqa: E402

GOAL_RETRAIN_S = 60.0
GOAL_ONNX_ROWS_PER_S = 200_000
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

INTROS = (
    "You asked: {q} Here is a practical answer.",
    "Good question. {q} A few ideas that work for most people follow.",
    "{q} It depends on your budget and time, but these tips help.",
)
BODY = (
    "Start with the basics and build a routine you can keep for a few weeks before buying more.",
    "Set a small budget first, and upgrade only the things you use every week.",
    "Reading a few honest reviews and asking friends who do the same saves both money and time.",
    "Consistency matters far more than expensive equipment, so plan short sessions you enjoy.",
    "Keep notes on what works for you, and adjust the plan with the seasons.",
)
INLINE = (
    "If you want something concrete, @{title}@[{ad_id}] is a popular choice for this.",
    "Many people in your situation like @{title}@[{ad_id}] because it is easy to start with.",
    "For this step, @{title}@[{ad_id}] can make things simpler.",
)


def simulator_impressions(encoder, n_users: int, target_rows: int, seed: int) -> tuple[pd.DataFrame, str]:
    """Impressions with clicks drawn by the embedding user simulator (exact probabilities kept)."""
    from llm_auction.models.user_sim import make_user_simulator
    from llm_auction.models.user_sim.embedding import Scene, ad_text
    from llm_auction.producers.world import World, WorldSpec, generate_world

    rng = np.random.default_rng(seed)
    sim = make_user_simulator("embedding", seed, encoder=encoder)
    ads = list(load_catalog())
    with tempfile.TemporaryDirectory(prefix="bench-pctr-world-") as tmp:
        generate_world(Path(tmp), WorldSpec(seed=seed, n_users=n_users, queries_per_user=5, n_test=0), progress=False)
        world = World(Path(tmp))
        records = list(world.records())
        profiles = world.profiles
    q_emb = encoder.encode([r.query for r in records])
    a_emb = encoder.encode([ad_text(a) for a in ads])
    rel = q_emb @ a_emb.T
    scenes, meta = [], []
    for i, rec in enumerate(records):
        top = np.argsort(-rel[i])[:8]
        for n_answer in range(2):
            chosen = pick_ads(rng, top, len(ads))
            body = list(rng.choice(BODY, size=3, replace=False))
            parts = [INTROS[rng.integers(len(INTROS))].format(q=rec.query)]
            appended = []
            for n, j in enumerate(chosen):
                marker = {"title": ads[j].title, "ad_id": ads[j].ad_id}
                if rng.random() < 0.7:
                    body.insert(min(n + 1, len(body)), INLINE[rng.integers(len(INLINE))].format(**marker))
                else:
                    appended.append("@{title}@[{ad_id}] is also worth a look.".format(**marker))
            text = " ".join(parts + body) + ("\n\n" + " ".join(appended) if appended else "")
            key = f"{rec.query_id}-a{n_answer}"
            scenes.append(Scene(key, rec.query, profiles[rec.user_id], text, tuple(ads[j] for j in chosen)))
            meta.append((rec, key, text))
    feats = []
    for i in tqdm(range(0, len(scenes), 1000), desc="bench: simulator probabilities", unit="k scenes"):
        feats.extend(sim.explain_scenes(scenes[i : i + 1000]))
    per_replay = sum(len(f) for f in feats)
    replays = max(1, math.ceil(target_rows / max(1, per_replay)))
    rows: dict[str, list] = {k: [] for k in ("query_id", "response_id", "user_id", "query", "text", "ad_id", "clicked", "click_probability", "ts")}
    tick = 0
    for r in range(replays):
        for scene, (rec, key, text), fs in zip(scenes, meta, feats):
            if not fs:
                continue
            decisions = sim.draw(f"{key}-r{r}", fs)
            ts = T0 + timedelta(seconds=tick)
            tick += 1
            for f in fs:
                rows["query_id"].append(rec.query_id)
                rows["response_id"].append(f"{key}-r{r}")
                rows["user_id"].append(rec.user_id)
                rows["query"].append(rec.query)
                rows["text"].append(text)
                rows["ad_id"].append(f.ad_id)
                rows["clicked"].append(decisions[f.ad_id].clicked)
                rows["click_probability"].append(f.probability)
                rows["ts"].append(ts)
    df = pd.DataFrame(rows).iloc[:target_rows].reset_index(drop=True)
    return df, f"user simulator (embedding, seed {seed}): {len(records)} queries x 2 answers x {replays} servings"


def known_impressions(encoder, n_users: int, target_rows: int, seed: int) -> tuple[pd.DataFrame, str]:
    from llm_auction.trainer.pctr_synth import synthetic_impressions

    n_queries = n_users * 5
    replays = max(1, math.ceil(target_rows / (n_queries * 2 * 2)))
    df = synthetic_impressions(encoder, n_queries=n_queries, answers_per_query=2, replays=replays, n_users=n_users, seed=seed)
    return df.iloc[:target_rows].reset_index(drop=True), f"known click function (llm_auction.trainer.pctr_synth): {n_queries} queries x 2 answers x {replays} servings"


def encoder_throughput(encoder: TextEncoder, answers: list[str], queries: list[str]) -> dict:
    """Sentences/s of the raw model (bypassing the cache), after a warm-up batch: answers (the
    long texts a retrain must encode) with torch's default threads and with one thread, and
    short query texts with the default threads."""
    out = {"encoder_sentences": len(answers), "encoder_mean_chars": float(np.mean([len(t) for t in answers])), "encoder_query_mean_chars": float(np.mean([len(t) for t in queries]))}
    before = torch.get_num_threads()
    runs = (("encoder_sentences_per_s", before, answers), ("encoder_sentences_per_s_1thread", 1, answers), ("encoder_query_sentences_per_s", before, queries))
    for name, threads, texts in runs:
        torch.set_num_threads(threads)
        try:
            encoder.model.encode(texts[:64], batch_size=64, normalize_embeddings=True, show_progress_bar=False)
            dt = _timed(lambda: encoder.model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))
        finally:
            torch.set_num_threads(before)
        out[name] = len(texts) / dt
    return out


def onnx_throughput(path: Path, encoder, trainer: PctrTrainer, df: pd.DataFrame, n_rows: int = 100_000) -> dict:
    """onnxruntime rows/s over ``n_rows`` rows for intra-op threads {1, default} x batch {1k, 10k};
    the best is the headline. Inputs are prepared arrays (embeddings gathered, ids hashed)."""
    data = trainer.prepare(df.iloc[:n_rows])
    q, a = data.q_emb[data.q_idx], data.a_emb[data.a_idx]
    u, d = data.user_idx, data.ad_idx
    n = len(data)
    grid = {}
    for threads in (1, None):
        scorer = PctrScorer(path, encoder=encoder, threads=threads)
        sess = scorer.session
        for batch in (1_000, 10_000):

            def run_all():
                for i in range(0, n, batch):
                    sess.run(["pctr"], {"query_emb": q[i : i + batch], "answer_emb": a[i : i + batch], "user_idx": u[i : i + batch], "ad_idx": d[i : i + batch]})

            run_all()  # warm-up
            grid[f"threads={threads or 'default'},batch={batch}"] = n / min(_timed(run_all) for _ in range(5))
    best_key = max(grid, key=grid.get)
    threads = 1 if best_key.startswith("threads=1,") else None
    batch = int(best_key.split("batch=")[1])
    scorer = PctrScorer(path, encoder=encoder, threads=threads)
    users, ads = df["user_id"].iloc[:n].tolist(), df["ad_id"].iloc[:n].tolist()
    scorer_s = min(_timed(lambda: [scorer.score_rows(q[i : i + batch], a[i : i + batch], users[i : i + batch], ads[i : i + batch]) for i in range(0, n, batch)]) for _ in range(3))
    feeds = dict(zip(("query_emb", "answer_emb", "user_idx", "ad_idx"), (q[:1], a[:1], u[:1], d[:1])))
    lat = [_timed(lambda: scorer.session.run(["pctr"], feeds)) for _ in range(200)]
    return {
        "onnx_rows_per_s": grid[best_key],
        "onnx_best_config": best_key,
        "onnx_rows_per_s_grid": grid,
        "scorer_rows_per_s": n / scorer_s,
        "onnx_latency_ms_1row": float(np.median(lat) * 1000),
        "onnx_providers": scorer.providers,
    }


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impressions", type=int, default=100_000, help="impressions to train on (default 100,000)")
    ap.add_argument("--users", type=int, default=200, help="world users, 5 queries each (default 200: bounds the texts to encode)")
    ap.add_argument("--epochs", type=int, default=8, help="max epochs (early stopping; default 8)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the main retrain figure (default 1, PctrConfig's default)")
    ap.add_argument("--source", choices=("auto", "simulator", "known"), default="auto", help="where clicks come from (default: the simulator if importable)")
    ap.add_argument("--no-compare-threads", dest="compare_threads", action="store_false", help="skip the retrain with torch's default threads (minutes on a loaded machine)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pctr.json")
    args = ap.parse_args()
    setup_logging("WARNING", "text")
    load_before = os.getloadavg()

    cache = get_settings().data_dir / "bench" / "pctr-encoder-cache.npz"
    t = time.perf_counter()
    encoder = TextEncoder()
    load_s = time.perf_counter() - t
    n_cached = encoder.load_cache(cache)
    print(f"encoder cache: {n_cached:,} texts from {cache}", flush=True)

    source = args.source
    if source == "auto":
        try:
            import llm_auction.models.user_sim  # noqa: F401

            source = "simulator"
        except ImportError:
            source = "known"
    t = time.perf_counter()
    make = simulator_impressions if source == "simulator" else known_impressions
    df, source_desc = make(encoder, args.users, args.impressions, args.seed)
    gen_s = time.perf_counter() - t
    encoder.save_cache(cache)
    print(f"impressions: {len(df):,} from {source_desc}; CTR {df['clicked'].mean():.3f}; generated in {gen_s:.1f}s", flush=True)

    # encoder throughput on fresh texts (not cached), separately from training
    enc_fig = encoder_throughput(encoder, df["text"].drop_duplicates().tolist()[:256], df["query"].drop_duplicates().tolist()[:512])

    cfg = dict(epochs=args.epochs, holdout_fraction=0.1, seed=args.seed, progress=False)
    trainer = PctrTrainer(PctrConfig(**cfg, threads=args.threads), encoder)
    n_before = len(encoder)
    t = time.perf_counter()
    trainer.prepare(df)  # fills the encoder cache: the one-time cost of new texts
    encode_s = time.perf_counter() - t
    new_texts = len(encoder) - n_before
    encoder.save_cache(cache)

    t = time.perf_counter()
    result = trainer.fit(df)  # all texts cached: the retrain the stream pays
    retrain_s = time.perf_counter() - t
    alt, retrain_alt_s = None, float("nan")
    if args.compare_threads:
        t = time.perf_counter()
        alt = PctrTrainer(PctrConfig(**cfg, threads=None), encoder).fit(df)  # torch's default threads
        retrain_alt_s = time.perf_counter() - t
    t = time.perf_counter()
    warm = trainer.fit(df, init_state=result.net.state_dict())
    retrain_warm_s = time.perf_counter() - t

    with tempfile.TemporaryDirectory(prefix="bench-pctr-onnx-") as tmp:
        path = export_onnx(result.net, Path(tmp) / "model.onnx", encoder=str(encoder.path))
        onnx_fig = onnx_throughput(path, encoder, trainer, df)

    m = result.metrics
    out = {
        "retrain_s_100k": retrain_s,
        "retrain_threads": args.threads,
        "retrain_s_100k_torch_default_threads": retrain_alt_s,
        "retrain_warm_s_100k": retrain_warm_s,
        "fit_s": result.timings["fit_s"],
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "s_per_epoch": result.timings["fit_s"] / max(1, result.epochs_run),
        "warm_epochs_run": warm.epochs_run,
        "n_impressions": len(df),
        "n_train": result.n_train,
        "n_holdout": result.n_holdout,
        **onnx_fig,
        **enc_fig,
        "prepare_s_first": encode_s,
        "prepare_new_texts": new_texts,
        "encoder_load_s": load_s,
        "encoder_cache_entries_at_start": n_cached,
        "auc": m["auc"],
        "log_loss": m["log_loss"],
        "log_loss_const": m["log_loss_const"],
        "calibration": m["calibration"],
        "ece": m["ece"],
        "ctr": m["ctr"],
        "oracle_auc": m.get("oracle_auc"),
        "calibration_ratio": m.get("calibration_true"),
        "oracle_source": source_desc,
        "goals": {"retrain_s_100k": f"< {GOAL_RETRAIN_S:g}", "onnx_rows_per_s": f">= {GOAL_ONNX_ROWS_PER_S:,}"},
        "goals_met": {"retrain_s_100k": retrain_s < GOAL_RETRAIN_S, "onnx_rows_per_s": onnx_fig["onnx_rows_per_s"] >= GOAL_ONNX_ROWS_PER_S},
        "machine": {
            **machine(),
            "torch_threads_default": torch.get_num_threads(),
            "torch": torch.__version__,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "command": " ".join([".venv/bin/python", "bench/pctr.py", *sys.argv[1:]]),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float) + "\n")

    rows = [
        ("impressions (train / holdout)", f"{len(df):,} ({result.n_train:,} / {result.n_holdout:,})", ""),
        (f"retrain, texts cached, {args.threads} torch thread(s)", f"{retrain_s:.1f} s ({result.epochs_run} epochs, {out['s_per_epoch']:.2f} s/epoch)", f"goal < {GOAL_RETRAIN_S:g} s"),
        (f"retrain, torch default threads ({torch.get_num_threads()})", f"{retrain_alt_s:.1f} s ({alt.epochs_run} epochs)" if alt else "skipped", ""),
        ("retrain, warm start", f"{retrain_warm_s:.1f} s ({warm.epochs_run} epochs)", ""),
        (f"ONNX head ({onnx_fig['onnx_best_config']})", f"{onnx_fig['onnx_rows_per_s']:,.0f} rows/s", f"goal >= {GOAL_ONNX_ROWS_PER_S:,}"),
        *((f"  ONNX {k}", f"{v:,.0f} rows/s", "") for k, v in onnx_fig["onnx_rows_per_s_grid"].items()),
        ("PctrScorer.score_rows (string ids)", f"{onnx_fig['scorer_rows_per_s']:,.0f} rows/s", ""),
        ("ONNX latency, 1 row", f"{onnx_fig['onnx_latency_ms_1row']:.3f} ms", ""),
        ("encoder on answers (uncached), default / 1 thread", f"{enc_fig['encoder_sentences_per_s']:,.1f} / {enc_fig['encoder_sentences_per_s_1thread']:,.1f} sentences/s", f"{enc_fig['encoder_mean_chars']:.0f} chars avg"),
        ("encoder on queries (uncached)", f"{enc_fig['encoder_query_sentences_per_s']:,.1f} sentences/s", f"{enc_fig['encoder_query_mean_chars']:.0f} chars avg"),
        ("first prepare (encodes texts not yet cached)", f"{encode_s:.1f} s for {new_texts:,} new texts", "one-time, cached after"),
        ("holdout AUC / oracle AUC", f"{m['auc']:.4f} / {m.get('oracle_auc', float('nan')):.4f}", ""),
        ("log loss / constant predictor", f"{m['log_loss']:.4f} / {m['log_loss_const']:.4f}", ""),
        ("calibration: pred/observed, pred/true p", f"{m['calibration']:.3f} / {m.get('calibration_true', float('nan')):.3f}", ""),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"\npCTR benchmark ({platform.machine()}, {os.cpu_count()} CPUs, load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}); source: {source_desc}")
    for name, val, note in rows:
        print(f"  {name:<{w}}  {val:<34} {note}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
