"""The grouped CPU LoRA ops (models/vllm_cpu_lora.py) against vLLM's own torch ops, on random
adapters: same numbers for every token that has an adapter, zero LoRA term for index -1, and the
plugin really replaces the names the CPU punica wrapper calls."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

from llm_auction.models import vllm_cpu_lora as grouped  # noqa: E402


def _case(seed: int, tokens: int = 37, slots: int = 3, rank: int = 8, d_in: int = 64, d_out: int = 96, four_d: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_in, generator=g)
    a = torch.randn(slots, 1, rank, d_in, generator=g) if four_d else torch.randn(slots, rank, d_in, generator=g)
    b = torch.randn(slots, 1, d_out, rank, generator=g)
    idx = torch.randint(0, slots, (tokens,), generator=g)
    return x, a, b, idx


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shrink_and_expand_equal_vllms(seed):
    x, a, b, idx = _case(seed)
    mine, theirs = torch.zeros(x.shape[0], 8), torch.zeros(x.shape[0], 8)
    grouped.bgmv_shrink(x, a, mine, idx, 0.5)
    lora_ops.bgmv_shrink(x, a, theirs, idx, 0.5)
    assert torch.allclose(mine, theirs, atol=1e-5)

    base = torch.randn(x.shape[0], 96)
    for add in (True, False):
        m, t = base.clone(), base.clone()
        grouped.bgmv_expand(mine, b, m, idx, add)
        lora_ops.bgmv_expand(theirs, b, t, idx, add)
        assert torch.allclose(m, t, atol=1e-4)
        m, t = torch.zeros(x.shape[0], 200), torch.zeros(x.shape[0], 200)
        grouped.bgmv_expand_slice(mine, b, m, idx, 50, 96, add)
        lora_ops.bgmv_expand_slice(theirs, b, t, idx, 50, 96, add)
        assert torch.allclose(m, t, atol=1e-4) and not m[:, :50].any() and not m[:, 146:].any()


def test_prefill_path_through_sgmv_uses_the_grouped_ops(monkeypatch):
    """sgmv_* expand per-sequence indices and call bgmv_* through the module's globals."""
    x, a, _, _ = _case(3, four_d=False)
    seq_lens, seq_idx = torch.tensor([20, 17]), torch.tensor([2, 0])
    want = torch.zeros(37, 8)
    lora_ops.bgmv_shrink(x, a, want, torch.repeat_interleave(seq_idx, seq_lens), 1.0)
    monkeypatch.setattr(lora_ops, "bgmv_shrink", grouped.bgmv_shrink)
    got = torch.zeros(37, 8)
    lora_ops.sgmv_shrink(x, a, got, torch.tensor([0, 20]), seq_lens, seq_idx, 2, 20, 37, 1.0)
    assert torch.allclose(got, want, atol=1e-5)


def test_no_adapter_index_gives_no_lora_term():
    x, a, b, idx = _case(4)
    idx[::2] = -1
    y = torch.full((x.shape[0], 8), 7.0)
    grouped.bgmv_shrink(x, a, y, idx, 1.0)
    assert not y[::2].any() and y[1::2].abs().sum() > 0
    out = torch.ones(x.shape[0], 96)
    grouped.bgmv_expand(y, b, out, idx, True)
    assert torch.equal(out[::2], torch.ones_like(out[::2])) and not torch.equal(out[1::2], torch.ones_like(out[1::2]))


def test_register_replaces_the_cpu_wrappers_names(monkeypatch):
    from vllm.lora.punica_wrapper import punica_cpu
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the plugin changes vLLM's CPU platform only")
    for module in (lora_ops, punica_cpu):
        for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    grouped.register()
    assert punica_cpu.bgmv_shrink is grouped.bgmv_shrink and lora_ops.bgmv_expand is grouped.bgmv_expand
    assert lora_ops.bgmv_expand_slice is grouped.bgmv_expand_slice
