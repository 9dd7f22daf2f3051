"""IRPO epoch benchmark: seconds per stage (sampling answers/s, scoring rows/s, DPO s/pair, publish)
for the tiny GPT-2 and SmolLM2-135M on CPU, and SmolLM2's DPO levers on the same pairs.

    .venv/bin/python bench/irpo.py --models tiny smollm2

Per model, one real epoch (:func:`llm_auction.trainer.irpo.run_epoch`) with the ``IRPOConfig.cpu()``
preset and the oracle reward (no pCTR model needed). SmolLM2 samples through the serving engine
(vLLM where importable, ``--backend``) with the responder's narrowing (K=8, ~1,000-token prompts);
the engine is closed before DPO (``close_backend``), and its CPU use while idle is measured first.
Then, on the first ``--dpo-pairs`` pairs of that epoch, DPO alone per lever: fp32 with TRL's
defaults (gradient checkpointing on), fp32 without checkpointing, bf16 autocast, bf16 with LoRA on
the upper half of the layers only, and that without precomputed reference log-probs.

Writes bench/results/irpo.json: ``epoch_s`` (model -> seconds), ``stage_s`` (model -> stage ->
seconds), ``dpo_s_per_pair`` (model -> seconds, the epoch's DPO stage over its pairs), ``pairs``,
``variants`` (model/lever -> DPO seconds, s/pair, train-loop seconds), ``idle_engine_cpu_share``,
and the machine with its CPU yardstick (bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import StealMeter, machine, table, write_results  # noqa: E402

# lever -> IRPOConfig overrides (SmolLM2); "upper" layers are filled in from the model's depth
VARIANTS = {
    "fp32-ckpt": dict(bf16=False, gradient_checkpointing=True),  # TRL's defaults, the ~30 s/pair baseline
    "fp32": dict(bf16=False, gradient_checkpointing=False),
    "bf16": dict(bf16=True, gradient_checkpointing=False),
    "bf16-upper": dict(bf16=True, gradient_checkpointing=False, lora_top_layers="half"),
    "bf16-upper-noprecompute": dict(bf16=True, gradient_checkpointing=False, lora_top_layers="half", precompute_ref_log_probs=False),
}


def vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def child_cpu_s() -> float:
    """CPU seconds used so far by this process's children (vLLM's engine core and workers)."""
    import psutil

    total = 0.0
    for c in psutil.Process().children(recursive=True):
        try:
            t = c.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def merge_previous(out: dict) -> dict:
    """Keep the other models' figures of the last run when this run measured only some models."""
    path = Path(__file__).resolve().parent / "results" / "irpo.json"
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return out
    for key, value in out.items():
        if isinstance(value, dict) and isinstance(prev.get(key), dict) and key not in ("machine",):
            out[key] = {**prev[key], **value}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    ap.add_argument("--queries", type=int, default=None, help="queries per epoch (default: 48 tiny, 16 SmolLM2)")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--candidates-k", type=int, default=8, help="candidates per prompt (the responder's narrowing)")
    ap.add_argument("--backend", choices=("vllm", "transformers"), default="vllm" if vllm_importable() else "transformers", help="SmolLM2's sampler")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS), help="SmolLM2 DPO levers to compare")
    ap.add_argument("--dpo-pairs", type=int, default=2, help="pairs each SmolLM2 lever trains on")
    ap.add_argument("--var", type=Path, default=Path("var"))
    args = ap.parse_args()
    logging.getLogger("llm_auction").setLevel(logging.WARNING)

    from llm_auction.models.adllm import SamplingConfig
    from llm_auction.models.backends import open_backend
    from llm_auction.models.encoder import TextEncoder
    from llm_auction.models.retrieval import candidate_picker
    from llm_auction.models.user_sim import make_user_simulator
    from llm_auction.producers.world import World, WorldSpec, generate_world
    from llm_auction.trainer import irpo
    from llm_auction.trainer.irpo_config import IRPOConfig
    from llm_auction.trainer.registry import ModelRegistry
    from llm_auction.trainer.reward import Reward, oracle_pctr
    from llm_auction.schemas.settings import Settings

    steal = StealMeter()
    world_dir = args.var / "bench-irpo" / "world"
    if not (world_dir / "manifest.json").exists():
        generate_world(world_dir, WorldSpec(seed=5, n_users=40, queries_per_user=5, n_test=40), progress=False)
    world = World(world_dir)
    enc = TextEncoder()
    oracle = Reward(oracle_pctr(make_user_simulator("embedding", seed=7, encoder=enc)), "oracle")
    pick = candidate_picker(args.candidates_k, enc)
    paths = {"tiny": args.var / "bench-irpo" / "tiny", "smollm2": args.var / "models" / "smollm2"}
    if "tiny" in args.models and not (paths["tiny"] / "config.json").exists():
        from llm_auction.models.tiny import TinyConfig, build_tiny

        build_tiny(paths["tiny"], TinyConfig(seed=0), progress=False)
    out: dict = {"epoch_s": {}, "stage_s": {}, "dpo_s_per_pair": {}, "pairs": {}, "pairs_all": {}, "variants": {}, "config": {}, "samples": args.samples}
    rows = []
    for name in args.models:
        model = paths[name]
        if not (model / "config.json").exists():
            print(f"skip {name}: no model at {model} (llm-auction models prepare-smollm2 --out {model})")
            continue
        n_layers = json.loads((model / "config.json").read_text()).get("num_hidden_layers") or 2
        queries = args.queries or (48 if name == "tiny" else 16)
        backend_name = "transformers" if name == "tiny" else args.backend
        # the tiny model's test settings (tests/integration/test_irpo.py); SmolLM2: the CPU preset
        extra = dict(learning_rate=1e-2, num_epochs=3, batch_size=4, pairing="all", sft_weight=0.0, bf16=False) if name == "tiny" else {}
        cfg = IRPOConfig.cpu(queries=queries, samples_per_query=args.samples, candidates_k=args.candidates_k, max_new_tokens=args.max_new_tokens,
                             reward="oracle", threads=2, backend=backend_name, **extra)
        sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens, seed=0)
        t0 = time.perf_counter()
        # the builder the epochs use; transformers on both threads as before
        backend = open_backend(Settings(adllm_threads=2), backend=backend_name, model=model, sampling=sampling, batch_size=cfg.sample_batch_size, base_version="base")
        open_s = time.perf_counter() - t0
        idle_share = None
        try:
            if backend_name == "vllm":
                backend.generate(irpo.narrow(irpo.build_offline_set(world, cfg.replace(queries=1), 0), pick), "base", n=1)  # warm
                c0, w0 = child_cpu_s(), time.perf_counter()
                time.sleep(10)
                idle_share = (child_cpu_s() - c0) / (time.perf_counter() - w0)  # cores busy while nothing is asked
                out.setdefault("idle_engine_cpu_share", {})[name] = round(idle_share, 3)
            with tempfile.TemporaryDirectory() as tmp:
                reg = ModelRegistry(Path(tmp), "policy")
                t0 = time.perf_counter()
                res = irpo.run_epoch(cfg, world=world, backend=backend, base_model=model, registry=reg, reward=oracle,
                                     pick=pick, close_backend=True)
                total = time.perf_counter() - t0
        finally:
            backend.close()
        s = {"engine_open": round(open_s, 2), **{k: round(x, 2) for k, x in res.stage_s.items()}}
        n_pairs = len(res.pairs)
        per_pair = round(res.stage_s["dpo"] / n_pairs, 2) if n_pairs else None
        out["epoch_s"][name] = round(total + open_s, 1)
        out["stage_s"][name], out["dpo_s_per_pair"][name], out["pairs"][name] = s, per_pair, n_pairs
        out["pairs_all"][name] = len(irpo.pair_table(res.samples, cfg.delta_th, "all")[0])
        out["config"][name] = {k: v for k, v in cfg.to_dict().items() if k in ("queries", "pairing", "learning_rate", "num_epochs", "bf16", "gradient_checkpointing",
                                                                             "precompute_ref_log_probs", "layers_to_transform", "threads", "backend", "max_new_tokens", "candidates_k")}
        out.setdefault("metrics", {})[name] = {k: res.metrics.get(k) for k in ("mean_reward", "format_error_rate", "mean_ads", "dpo_first_loss", "dpo_max_length")}
        n_samples = queries * args.samples
        rows += [
            (f"{name} engine open ({backend_name})", f"{open_s:.1f} s", ""),
            (f"{name} sampling", f"{n_samples / s['sample']:.2f} answers/s ({n_samples} answers)", ""),
            (f"{name} scoring", f"{n_samples / s['score']:.0f} rows/s", ""),
            (f"{name} DPO", f"{per_pair} s/pair ({n_pairs} pairs, max_length {res.metrics.get('dpo_max_length')})", "<= 3 s/pair" if name == "smollm2" else ""),
            (f"{name} publish", f"{s.get('publish', 0):.2f} s", ""),
            (f"{name} epoch", f"{total + open_s:.1f} s", "< 30 min for 128 x 5" if name == "smollm2" else ""),
        ]
        if idle_share is not None:
            rows.append((f"{name} idle vLLM engine", f"{idle_share:.2f} cores busy", ""))
        if name != "smollm2" or not n_pairs:
            continue
        # DPO levers, each on the same pairs
        queries_by_id = {q.query_id: q for q in irpo.narrow(irpo.build_offline_set(world, cfg, irpo.epoch_bid_seed(cfg, None)), pick)}
        sub = res.pairs.head(args.dpo_pairs)
        for v in args.variants:
            over = dict(VARIANTS[v])
            if over.get("lora_top_layers") == "half":
                over["lora_top_layers"] = max(1, n_layers // 2)
            vcfg = cfg.replace(**over)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                dpo = irpo.train_dpo(model, None, lambda tok, mc: irpo.dpo_rows(tok, mc, queries_by_id, sub, True, vcfg.max_new_tokens), vcfg, Path(tmp) / "a", Path(tmp))
                sec = time.perf_counter() - t0
            loop = next((h["train_runtime"] for h in dpo.log_history if "train_runtime" in h), None)
            out["variants"][f"{name}/{v}"] = {"dpo_s": round(sec, 1), "pairs": len(sub), "dpo_s_per_pair": round(sec / len(sub), 2),
                                              "train_loop_s": round(float(loop), 1) if loop is not None else None,
                                              "first_loss": dpo.metrics.get("dpo_first_loss"), "max_length": dpo.metrics.get("dpo_max_length")}
            rows.append((f"{name} DPO lever {v}", f"{sec / len(sub):.2f} s/pair ({len(sub)} pairs, {sec:.1f} s, loop {loop})", ""))
            print(rows[-1], flush=True)
    out["machine"] = machine()
    out["steal_share"] = steal.share()
    out["commands"] = {name: " ".join(["python", *sys.argv]) for name in out["epoch_s"] if name in args.models}
    out["load_average"] = {name: out["machine"].get("load_average") for name in out["commands"]}
    print(table(rows))
    print(f"wrote {write_results('irpo', merge_previous(out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
