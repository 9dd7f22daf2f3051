"""``IRPOConfig.sft_weight`` (RPO: DPO plus the chosen answers' NLL) with real TRL on the tiny GPT-2.

At the first step the policy equals its reference, so the DPO term is ln 2 and the logged loss is
ln 2 + w x (mean token NLL of the chosen answers), which this test computes by hand with plain
transformers: a check that TRL received the weight and the loss type, not only that it ran.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.integration

ROWS = [
    {"prompt": "Question: where can I buy running shoes?\nAnswer:", "chosen": " Try [AD:shoe-1] for light trainers.", "rejected": " I do not know."},
    {"prompt": "Question: a good laptop for students?\nAnswer:", "chosen": " A light model with long battery life.", "rejected": " [AD:bad] buy now buy now"},
]


def _chosen_nll(model_dir, rows) -> float:
    """Mean NLL per chosen-answer token (EOS included, as TRL appends it), over the rows' tokens together."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    total, n = 0.0, 0
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(r["chosen"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        targets = ids[0, 1:]
        token_logp = logp[torch.arange(len(targets)), targets][len(p) - 1:]
        total -= float(token_logp.sum())
        n += len(c)
    return total / n


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_first_loss_is_ln2_plus_weighted_chosen_nll(tiny_model_dir, tmp_path, weight):
    from llm_auction.trainer import irpo
    from llm_auction.trainer.irpo_config import IRPOConfig

    cfg = IRPOConfig(sft_weight=weight, batch_size=2, bf16=False, learning_rate=1e-3, threads=1, precompute_ref_log_probs=False)
    result = irpo.train_dpo(tiny_model_dir, None, lambda tok, conf: (ROWS, 64), cfg, tmp_path / "adapter", tmp_path / "work")
    first = result.metrics["dpo_first_loss"]
    expected = math.log(2) + weight * _chosen_nll(tiny_model_dir, ROWS)
    assert first == pytest.approx(expected, abs=2e-3), (first, expected)
    if weight:
        assert first > math.log(2) + 0.1  # the NLL term is there and is not negligible
