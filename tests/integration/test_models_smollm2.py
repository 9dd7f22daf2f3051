"""SmolLM2-135M-Instruct as the Ad-LLM: converted once from the GGUF wheel, then served by the
transformers backend. Slow (the conversion takes ~30-60 s on 2 cores): `pytest -m slow`."""

import json

import pytest

from llm_auction.models.adllm import SamplingConfig
from llm_auction.models.backends import make_backend

from models_fixtures import make_queries, smollm2_dir  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow


def test_prepared_folder_is_a_plain_fp32_model_with_chatml_and_im_end(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_auction.models.smollm2 import prepare_smollm2

    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert json.loads((smollm2_dir / "llm_auction_prepared.json").read_text())["parameters"] > 130_000_000
    assert "quantization_config" not in cfg and cfg["dtype"] == "float32"
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and "<|im_start|>" in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir))
    assert model.generation_config.eos_token_id == 2
    assert prepare_smollm2(smollm2_dir)["skipped"] is True  # idempotent


def test_smollm2_answers_are_seeded_and_batching_does_not_change_greedy_text(smollm2_dir):
    qs = make_queries(2, seed=11, n_candidates=6)
    sampled = make_backend("transformers", smollm2_dir, num_threads=1, sampling=SamplingConfig(max_new_tokens=32))
    a = sampled.generate(qs[:1], "base", n=2)
    assert len(a) == 1 and len(a[0]) == 2 and all(a[0])
    assert sampled.generate(qs[:1], "base", n=2) == a
    greedy = make_backend("transformers", smollm2_dir, num_threads=1, sampling=SamplingConfig(temperature=0, max_new_tokens=16))
    alone = greedy.generate(qs[:1], "base")[0][0]
    batched = greedy.generate(qs, "base")[0][0]  # left-padded next to a longer prompt
    assert alone == batched
