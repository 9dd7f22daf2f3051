"""Ad-LLM generation: transformers against vLLM on the same real prompts, n=1 and n=5.

    .venv/bin/python bench/generation.py [--queries 8] [--candidates 8] [--ns 1,5] [--backends transformers,vllm,vllm-lora]

The prompts are the responder's: world test queries with fresh bids, narrowed to the top
``--candidates`` ads by relevance (the demo's K=8), rendered by each backend from the same messages,
SmolLM2-135M-Instruct, the services' sampling settings (temperature 0.7, ``LLMA_ADLLM_MAX_NEW_TOKENS``).
Each backend runs with its own service defaults (transformers: ``LLMA_ADLLM_THREADS`` torch threads,
the shared-prefix KV cache for n > 1; vLLM: bf16 on a CPU with AVX512-BF16, ``LLMA_VLLM_*``), one
after the other, after a warm-up call. Tokens are counted by re-tokenizing the answers with the
model's tokenizer, so both backends are counted alike. Writes ``bench/results/generation.json``.

``vllm-lora`` is vLLM serving a policy version: a LoRA adapter (r 8 on every attention projection,
random weights: the cost does not depend on their values) hot-loaded into the engine and named in
every request, as the responder serves a canary. Its LoRA ops are ``LLMA_VLLM_CPU_LORA_OPS``'s
(``grouped``, the project's plugin, or ``vllm``); run once with each to compare them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, StealMeter, machine, write_results  # noqa: E402

from llm_auction.schemas.settings import Settings  # noqa: E402


def _queries(n: int, k: int, seed: int, data_dir: Path):
    from llm_auction.models.encoder import TextEncoder
    from llm_auction.models.retrieval import top_k_candidates
    from llm_auction.producers.world import World, WorldSpec, generate_world

    root = data_dir / "world"
    if not (root / "manifest.json").exists():
        generate_world(root, WorldSpec(seed=7), progress=False)
    world = World(root)
    enc = TextEncoder()
    rng = np.random.default_rng(seed)
    qs = [world.event(r, bids=rng.integers(1, 101, len(world.ads)).tolist()) for r, _ in zip(world.records("test"), range(n))]
    return [q.model_copy(update={"candidates": top_k_candidates(q, k, enc)}) for q in qs]


def _model(data_dir: Path) -> Path:
    from llm_auction.models.smollm2 import is_prepared, prepare_smollm2

    path = data_dir / "models" / "smollm2"
    if not is_prepared(path):
        prepare_smollm2(path)
    return path


def _random_adapter(model: Path, out: Path) -> Path:
    """A PEFT LoRA adapter (r 8, attention projections) with random nonzero weights, saved as safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model), local_files_only=True)
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)  # PEFT starts B at zero; a real adapter's term is not zero
    peft.save_pretrained(str(out), safe_serialization=True)
    return out


def run_backend(name: str, model: Path, warm: list, sets: dict[int, list], s: Settings) -> dict:
    """Time ``backend.generate(sets[n], n=n)`` for each n after a warm-up on ``warm``. Each n gets
    its own queries, so no call finds another's whole prompts in vLLM's prefix cache."""
    import tempfile

    from transformers import AutoTokenizer

    from llm_auction.models.backends import open_backend

    tok = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    lora = name == "vllm-lora"
    backend = open_backend(s, backend="vllm" if lora else name, model=model)
    version = "base"
    scratch = tempfile.TemporaryDirectory(prefix="bench-lora-")
    try:
        if lora:
            version = "bench-lora"
            backend.load_policy(version, _random_adapter(model, Path(scratch.name) / "adapter"), kind="lora")
        every = [q for qs in sets.values() for q in qs]
        prompt_tokens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in backend.prompts(every)]
        backend.generate(warm, version, n=1)  # warm-up (vLLM: compiles its graphs, fills the shared prefix)
        out: dict = {"prompt_tokens_mean": round(sum(prompt_tokens) / len(prompt_tokens), 1), "by_n": {}}
        for n, queries in sets.items():
            before = dict(getattr(backend, "stats", {}))
            t0 = time.perf_counter()
            answers = backend.generate(queries, version, n=n)
            seconds = time.perf_counter() - t0
            texts = [a for per_query in answers for a in per_query]
            new_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
            row = {
                "seconds": round(seconds, 2), "answers": len(texts), "new_tokens": new_tokens,
                "s_per_answer": round(seconds / len(texts), 3), "tokens_per_s": round(new_tokens / seconds, 1),
                "answers_with_marker": sum("@[Ad-" in t for t in texts),
            }
            stats = getattr(backend, "stats", None)
            if stats:
                p = stats["prompt_tokens"] - before.get("prompt_tokens", 0)
                c = stats["cached_prompt_tokens"] - before.get("cached_prompt_tokens", 0)
                row["prefix_cache_hit_rate"] = round(c / p, 3) if p else 0.0
            out["by_n"][str(n)] = row
            print(f"  {name:<12} n={n}: {row['s_per_answer']:.2f} s/answer, {row['tokens_per_s']:.1f} tokens/s", flush=True)
        if lora:
            out["lora_ops"] = s.vllm_cpu_lora_ops
        return out
    finally:
        backend.close()
        scratch.cleanup()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=8, help="test queries per n (default 8; each n gets its own, the same for every backend)")
    ap.add_argument("--candidates", type=int, default=8, help="candidate ads shown per query, top K by relevance (default 8, the demo's)")
    ap.add_argument("--ns", default="1,5", help="answers per query to time, comma-separated (default 1,5)")
    ap.add_argument("--backends", default="transformers,vllm", help="backends to run, comma-separated: transformers, vllm, vllm-lora (vLLM serving a LoRA policy version) (default transformers,vllm)")
    ap.add_argument("--name", default="generation", help="results file bench/results/<name>.json (default generation)")
    ap.add_argument("--seed", type=int, default=11, help="seed of the queries' fresh bids (default 11)")
    args = ap.parse_args(argv)
    ns = [int(x) for x in args.ns.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.queries < 1 or any(n < 1 for n in ns) or not backends:
        ap.error("--queries and every n must be >= 1, and at least one backend is needed")
    unknown = sorted(set(backends) - {"transformers", "vllm", "vllm-lora"})
    if unknown:
        ap.error(f"unknown backend(s) {unknown}: choose from transformers, vllm, vllm-lora")
    s = Settings()
    data_dir = s.data_dir
    steal = StealMeter()
    model = _model(data_dir)
    queries = _queries(2 + args.queries * len(ns), args.candidates, args.seed, data_dir)
    warm, rest = queries[:2], queries[2:]
    sets = {n: rest[i * args.queries : (i + 1) * args.queries] for i, n in enumerate(ns)}
    results = {}
    for name in backends:
        print(f"{name}: {args.queries} queries for each n in {ns}", flush=True)
        results[name] = run_backend(name, model, warm, sets, s)
    doc = {
        "machine": machine(),
        "cpu_steal_share": steal.share(),
        "settings": {
            "model": "SmolLM2-135M-Instruct", "queries": args.queries, "candidates_k": args.candidates,
            "max_new_tokens": s.adllm_max_new_tokens, "temperature": 0.7, "adllm_threads": s.adllm_threads,
            "vllm_cpu_threads": s.vllm_cpu_threads, "vllm_kv_cache_gb": s.vllm_kv_cache_gb, "vllm_cpu_lora_ops": s.vllm_cpu_lora_ops,
        },
        "backends": results,
        "s_per_answer": {b: {n: r["by_n"][n]["s_per_answer"] for n in r["by_n"]} for b, r in results.items()},
        "tokens_per_s": {b: {n: r["by_n"][n]["tokens_per_s"] for n in r["by_n"]} for b, r in results.items()},
        "prefix_cache_hit_rate": {b: {n: r["by_n"][n].get("prefix_cache_hit_rate") for n in r["by_n"]} for b, r in results.items()},
    }
    if "transformers" in results and "vllm" in results:
        doc["speedup_vllm_over_transformers"] = {
            n: round(results["transformers"]["by_n"][n]["s_per_answer"] / results["vllm"]["by_n"][n]["s_per_answer"], 2)
            for n in results["vllm"]["by_n"] if n in results["transformers"]["by_n"]
        }
    path = write_results(args.name, doc)
    print()
    print("| backend | n | s/answer | tokens/s | prompt tokens | prefix-cache hit rate |")
    print("|---|---|---|---|---|---|")
    for b, r in results.items():
        for n, row in r["by_n"].items():
            hit = row.get("prefix_cache_hit_rate")
            print(f"| {b} | {n} | {row['s_per_answer']:.2f} | {row['tokens_per_s']:.1f} | {r['prompt_tokens_mean']:.0f} | {'-' if hit is None else f'{hit:.0%}'} |")
    if "speedup_vllm_over_transformers" in doc:
        print("speed-up of vLLM over transformers (s/answer):", ", ".join(f"n={n}: {x}x" for n, x in doc["speedup_vllm_over_transformers"].items()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # vLLM's engine core starts by spawn: the guard is required
    sys.exit(main())
