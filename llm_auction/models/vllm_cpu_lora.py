"""One matmul per adapter slot for vLLM's CPU LoRA path (a vLLM general plugin).

vLLM's CPU punica ops (``vllm/lora/ops/torch_ops``) compute each token's LoRA term by gathering
a copy of its adapter's matrix for that token (``weights[indices]``, then a batched einsum). For
decode (one token per sequence) that is cheap; for prefill it copies the matrix once per prompt
token, for every wrapped layer, so with the responder's long prompts a batch with any LoRA query
took several times as long as the base (figures: docs/serving.md, "LoRA on the CPU build", and
docs/benchmarks.md#ad-llm-generation). The functions below compute the same result with one ``x @ W_s.T`` per adapter
slot s (the engine holds ``max_loras`` slots), masked to the tokens of that slot: no per-token
copy, no data-dependent shapes (so torch.compile traces it as it traced the original).

Semantics as vLLM documents them: a token index of -1 means no adapter (its LoRA term is zero).
Registered through the ``vllm.general_plugins`` entry point (pyproject), which vLLM runs in each
of its processes; it changes the CPU platform only. ``LLMA_VLLM_CPU_LORA_OPS=vllm`` keeps vLLM's
own ops (``LLMA_VLLM_CPU_LORA_OPS``; the unit test compares both).
"""

from __future__ import annotations


def _stack(weights):
    """(slots, [1,] out, in) -> (slots, out, in)."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def _lora_term(inputs, weights, indices, dtype):
    """``y[t] = x[t] @ W[indices[t]].T``, zero where ``indices[t] < 0``: one matmul per slot."""
    import torch

    w = _stack(weights)
    x = inputs.to(dtype)
    out = torch.zeros(x.shape[0], w.shape[1], dtype=dtype, device=x.device)
    for s in range(w.shape[0]):
        mask = (indices == s).unsqueeze(1).to(dtype)
        out += mask * (x @ w[s].to(dtype).T)
    return out


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    out = _lora_term(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : out.shape[1]] = scaling * out


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    out = _lora_term(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = 1 if out.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    common = min(out.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output_tensor[:, :common] += out[:limit, :common]
    else:
        output_tensor[:, :common] = out[:limit, :common]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int, slice_size: int, add_inputs: bool = True):
    out = _lora_term(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += out
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = out


def register() -> None:
    """The plugin: on vLLM's CPU platform, route its torch LoRA ops to the functions above.

    vLLM calls it in every process it starts (possibly more than once: it is idempotent). The
    ``sgmv_*`` (prefill) ops expand per-sequence indices to per-token ones and call the ``bgmv_*``
    ops through their module's globals, and the CPU punica wrapper imported the names itself, so
    both modules' names are replaced.
    """
    from llm_auction.schemas.settings import get_settings

    if get_settings().vllm_cpu_lora_ops == "vllm":
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
            if hasattr(module, name):
                setattr(module, name, globals()[name])
