"""The compute floor under one DPO pair on SmolLM2 (CPU): plain torch, no TRL.

    .venv/bin/python bench/dpo_floor.py [--model var/models/smollm2] [--tokens 1130] [--repeats 3]

A DPO pair trains on two rows (chosen, rejected) of prompt + answer, ~1,130 tokens each with the
responder's prompts. With the reference log-probs precomputed (the CPU preset), the least a step
can cost is one forward of both rows through the policy and the backward to the lowest LoRA
adapter. This times exactly that: the model in bf16 autocast, LoRA (PEFT, r 8) on q/v of every
layer as IRPO's CPU preset does, a batch of the two rows, forward, a token-level loss, backward;
also forward alone. Issue 13 asked for 3 s per pair: if the floor is above it, no DPO
implementation on these 2 cores reaches it.

Writes bench/results/dpo_floor.json: ``forward_s``, ``forward_backward_s`` (wall, median of
``--repeats`` after one warm-up), the same as CPU seconds per thread (``*_cpu_s_per_thread``: what
the wall time would be with the cores to itself, so a loaded machine does not inflate the floor),
``tokens``, ``threads`` and the machine (bench/common.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_results  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("var/models/smollm2"), help="SmolLM2 folder (llm-auction models prepare-smollm2)")
    ap.add_argument("--tokens", type=int, default=1130, help="tokens per row (the CPU epochs' max_length)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llm_auction.models.smollm2 import is_prepared, prepare_smollm2

    if not is_prepared(args.model):
        prepare_smollm2(args.model)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    model.enable_input_require_grads()  # as TRL does with PEFT: gradients flow to the inputs
    ids = torch.randint(100, model.config.vocab_size - 1, (2, args.tokens))

    def forward(backward: bool) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(backward):
            logits = model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        if backward:
            loss.backward()
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - t, time.process_time() - c

    results = {}
    for name, backward in (("forward", False), ("forward_backward", True)):
        forward(backward)  # warm-up
        runs = [forward(backward) for _ in range(args.repeats)]
        results[f"{name}_s"] = statistics.median(w for w, _ in runs)
        # CPU seconds over the threads: the wall time these cores would need with nothing else running
        results[f"{name}_cpu_s_per_thread"] = statistics.median(c for _, c in runs) / args.threads
    data = {**{k: round(v, 3) for k, v in results.items()}, "tokens": args.tokens, "rows": 2, "threads": args.threads, "goal_s_per_pair": 3.0, "machine": machine()}
    print(table([("forward of a pair's 2 rows: wall / CPU per thread (s)", f"{data['forward_s']:.2f} / {data['forward_cpu_s_per_thread']:.2f}", "-"),
                 ("forward + backward, the floor of a DPO pair: wall / CPU per thread (s)",
                  f"{data['forward_backward_s']:.2f} / {data['forward_backward_cpu_s_per_thread']:.2f}", "3.00 s per pair (issue 13)")]))
    print(write_results("dpo_floor", data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
