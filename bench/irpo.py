"""IRPO epoch benchmark: seconds per stage (sampling answers/s, scoring rows/s, DPO pairs/s, publish)
for the tiny GPT-2 and SmolLM2-135M on CPU, and the DPO levers (bf16, reference log-probs computed
once, LoRA on upper layers only, one pair per query).

    .venv/bin/python bench/irpo.py --models tiny smollm2 --queries 8

Writes bench/results/irpo.json: ``epoch_s`` (model -> seconds), ``stage_s`` (model -> stage ->
seconds), ``dpo_s_per_pair`` (model -> seconds), the per-variant DPO figures, and the machine with
its CPU yardstick (bench/common.py). The reward is the simulator's oracle (no pCTR model needed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import StealMeter, machine, table, write_results  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    ap.add_argument("--queries", type=int, default=8, help="queries per epoch (default 8)")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--candidates-k", type=int, default=8, help="SmolLM2's candidates per prompt (the tiny model gets all: it never reads them)")
    ap.add_argument("--variants", nargs="*", default=["fp32", "bf16", "bf16-upper"], help="DPO variants on SmolLM2: fp32, bf16, bf16-upper, fp32-noprecompute")
    ap.add_argument("--var", type=Path, default=Path("var"))
    args = ap.parse_args()

    from llm_auction.models.adllm import SamplingConfig
    from llm_auction.models.backends import make_backend
    from llm_auction.models.encoder import TextEncoder
    from llm_auction.models.retrieval import candidate_picker
    from llm_auction.models.user_sim import make_user_simulator
    from llm_auction.producers.world import World, WorldSpec, generate_world
    from llm_auction.trainer import irpo
    from llm_auction.trainer.irpo_config import IRPOConfig
    from llm_auction.trainer.registry import ModelRegistry

    steal = StealMeter()
    world_dir = args.var / "bench-irpo" / "world"
    if not (world_dir / "manifest.json").exists():
        generate_world(world_dir, WorldSpec(seed=5, n_users=40, queries_per_user=5, n_test=40), progress=False)
    world = World(world_dir)
    enc = TextEncoder()
    oracle = irpo.oracle_pctr(make_user_simulator("embedding", seed=7, encoder=enc))
    paths = {"tiny": args.var / "bench-irpo" / "tiny", "smollm2": args.var / "models" / "smollm2"}
    if "tiny" in args.models and not (paths["tiny"] / "config.json").exists():
        from llm_auction.models.tiny import TinyConfig, build_tiny

        build_tiny(paths["tiny"], TinyConfig(seed=0), progress=False)
    out = {"epoch_s": {}, "stage_s": {}, "dpo_s_per_pair": {}, "pairs": {}, "variants": {}, "queries": args.queries, "samples": args.samples}
    rows = []
    for name in args.models:
        model = paths[name]
        if not (model / "config.json").exists():
            print(f"skip {name}: no model at {model} (llm-auction models prepare-smollm2 --out {model})")
            continue
        k = None if name == "tiny" else args.candidates_k
        variants = ["fp32"] if name == "tiny" else args.variants
        n_layers = __import__("json").loads((model / "config.json").read_text()).get("num_hidden_layers", 2)
        for v in variants:
            cfg = IRPOConfig(
                queries=args.queries, samples_per_query=args.samples, candidates_k=k, max_new_tokens=args.max_new_tokens, oracle=True,
                bf16=v.startswith("bf16"), precompute_ref_log_probs=not v.endswith("noprecompute"), threads=2, batch_size=4,
                layers_to_transform=list(range(n_layers // 2, n_layers)) if v.endswith("upper") else None,
            )
            sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens, seed=0)
            backend = make_backend("transformers", model, sampling=sampling, num_threads=2)
            with tempfile.TemporaryDirectory() as tmp:
                reg = ModelRegistry(Path(tmp), "policy")
                t0 = time.perf_counter()
                res = irpo.run_epoch(cfg, world=world, backend=backend, base_model=model, registry=reg, pctr=oracle, pctr_version="oracle", pick=candidate_picker(k, enc))
                total = time.perf_counter() - t0
            n_pairs = len(res.pairs)
            s = {k2: round(x, 2) for k2, x in res.stage_s.items()}
            per_pair = round(s["dpo"] / n_pairs, 2) if n_pairs else None
            out["variants"][f"{name}/{v}"] = {"epoch_s": round(total, 1), "stage_s": s, "pairs": n_pairs, "dpo_s_per_pair": per_pair,
                                              "first_loss": res.metrics.get("dpo_first_loss"), "max_length": res.metrics.get("dpo_max_length")}
            if v == variants[0] or (per_pair and per_pair < (out["dpo_s_per_pair"].get(name) or 1e9)):
                out["epoch_s"][name], out["stage_s"][name], out["dpo_s_per_pair"][name], out["pairs"][name] = round(total, 1), s, per_pair, n_pairs
            n_samples = args.queries * args.samples
            rows += [
                (f"{name}/{v} sampling", f"{n_samples / s['sample']:.2f} answers/s", ""),
                (f"{name}/{v} scoring", f"{n_samples / s['score']:.0f} rows/s", ""),
                (f"{name}/{v} DPO", f"{per_pair} s/pair ({n_pairs} pairs, max_length {res.metrics.get('dpo_max_length')})", "<= 3 s/pair (SmolLM2)" if name == "smollm2" else ""),
                (f"{name}/{v} publish", f"{s.get('publish', 0):.2f} s", ""),
                (f"{name}/{v} epoch", f"{total:.1f} s", ""),
            ]
            del backend
    out["machine"] = machine()
    out["steal_share"] = steal.share()
    print(table(rows))
    print(f"wrote {write_results('irpo', out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
