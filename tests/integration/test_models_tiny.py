"""The transformers Ad-LLM backend on a real model: the tiny GPT-2 trained in-session.

Covers what the responder and the IRPO sampler rely on: the model folder loads with the Auto
classes, answers come back n per query in query order, sampling is reproducible for a seed,
answers carry markers that the mechanism accepts, and policy versions (full weights, LoRA)
really change what is served.
"""

import json

import pytest
import torch

from llm_auction.auction import allocate
from llm_auction.models.adllm import SamplingConfig, UnknownPolicy
from llm_auction.models.backends import make_backend
from llm_auction.schemas import QueryEvent
from llm_auction.schemas.catalog import load_catalog

from models_fixtures import make_queries, tiny_adllm, tiny_model_dir  # noqa: F401  (session fixtures)

pytestmark = pytest.mark.integration  # trains and loads the tiny GPT-2


def valid(text: str, q: QueryEvent) -> bool:
    a = allocate(text, q.candidates)
    return a.n_ads > 0 and not a.format_error


def test_tiny_model_folder_loads_with_auto_classes(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((tiny_model_dir / "tiny_build.json").read_text())
    assert info["loss_last"] < info["loss_first"] / 4  # it trained
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert model.config.model_type == "gpt2" and model.config.n_layer == 2
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>" and tok.chat_template
    # Markers are two tokens: "@Title@" and "[Ad-XXXX]".
    ad = load_catalog()[0]
    assert len(tok(f"@{ad.title}@[{ad.ad_id}]", add_special_tokens=False).input_ids) == 2


def test_n_answers_per_query_in_order_and_reproducible_for_a_seed(tiny_adllm):
    qs = make_queries(3)
    a = tiny_adllm.generate(qs, "base", n=2)
    assert len(a) == 3 and all(len(x) == 2 for x in a)
    assert all(isinstance(t, str) and t for x in a for t in x)
    assert tiny_adllm.generate(qs, "base", n=2) == a  # same seed, same answers
    assert tiny_adllm.generate(qs, "base", n=2, seed=1) != a
    assert a[0][0] != a[0][1] or a[1][0] != a[1][1]  # the n samples are not copies
    assert tiny_adllm.generate([], "base") == []
    # No prompt text leaks into the completion.
    assert not any("<|assistant|>" in t or "# User Question" in t for x in a for t in x)


def test_most_tiny_answers_hold_valid_markers_and_some_break_when_hot(tiny_model_dir):
    qs = make_queries(8, seed=2)
    backend = make_backend("transformers", tiny_model_dir, num_threads=1)
    answers = backend.generate(qs, "base", n=4)
    rate = sum(valid(t, q) for q, ts in zip(qs, answers) for t in ts) / 32
    assert rate > 0.3
    hot = make_backend("transformers", tiny_model_dir, num_threads=1, sampling=SamplingConfig(temperature=1.3, top_p=1.0, top_k=0))
    broken = sum(allocate(t, q.candidates).format_error for q, ts in zip(qs, hot.generate(qs, "base", n=4)) for t in ts)
    assert broken >= 1  # a real, imperfect model: the pipeline sees format errors too


def test_prefix_cache_path_gives_the_same_samples_as_plain_generate(tiny_model_dir):
    qs = make_queries(2, seed=3)
    cached = make_backend("transformers", tiny_model_dir, num_threads=1, prefix_cache=True).generate(qs, "base", n=3)
    plain = make_backend("transformers", tiny_model_dir, num_threads=1, prefix_cache=False).generate(qs, "base", n=3)
    assert cached == plain


def test_greedy_gives_n_identical_answers(tiny_model_dir):
    backend = make_backend("transformers", tiny_model_dir, num_threads=1, sampling=SamplingConfig(temperature=0, max_new_tokens=40))
    (a,) = backend.generate(make_queries(1, seed=4), "base", n=3)
    assert a[0] == a[1] == a[2]


def steer(model, backend, qs, ad, steps: int = 40, lr: float = 1e-2):
    """Fine-tune ``model`` in place so that it answers every prompt with ``ad``'s marker."""
    tok = backend.tokenizer
    answer = f"A practical pick here is @{ad.title}@[{ad.ad_id}]. Have fun and keep it simple."
    rows = []
    for p in backend.prompts(qs):
        prompt = tok(p, add_special_tokens=False, verbose=False).input_ids[-tok.model_max_length :]
        target = tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append((prompt + target, len(prompt)))
    ids = torch.tensor([r for r, _ in rows])
    labels = ids.clone()
    for i, (_, start) in enumerate(rows):
        labels[i, :start] = -100
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model


def share_of(answers, ad_id):
    flat = [t for ts in answers for t in ts]
    return sum(ad_id in t for t in flat) / len(flat)


@pytest.fixture(scope="module")
def target_ad():
    return next(a for a in load_catalog() if a.ad_id == "Ad-2489")  # Progesterone Tea


def test_full_weight_policy_swap_serves_the_new_weights(tiny_model_dir, tmp_path, target_ad):
    from transformers import AutoModelForCausalLM

    backend = make_backend("transformers", tiny_model_dir, num_threads=1)
    train_qs, eval_qs = make_queries(8, seed=5), make_queries(6, seed=6)
    base = backend.generate(eval_qs, "base", n=2)
    model = steer(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), backend, train_qs, target_ad)
    model.save_pretrained(str(tmp_path / "v1"))
    backend.load_policy("v1", str(tmp_path / "v1"), "full")
    assert backend.versions == ["base", "v1"]
    tuned = backend.generate(eval_qs, "v1", n=2)
    assert share_of(tuned, target_ad.ad_id) > 0.5 > share_of(base, target_ad.ad_id)
    assert backend.generate(eval_qs, "base", n=2) == base  # the base is untouched
    with pytest.raises(UnknownPolicy, match="'v2' is not loaded"):
        backend.generate(eval_qs, "v2")
    with pytest.raises(ValueError, match="base model's version name"):
        backend.load_policy("base", str(tmp_path / "v1"), "full")


def test_lora_adapter_saved_with_peft_loads_as_a_policy_version(tiny_model_dir, tmp_path, target_ad):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    backend = make_backend("transformers", tiny_model_dir, num_threads=1, max_loaded_policies=1)
    train_qs, eval_qs = make_queries(8, seed=5), make_queries(6, seed=6)
    base = backend.generate(eval_qs, "base", n=2)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
        LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, task_type="CAUSAL_LM"),
    )
    steer(peft_model, backend, train_qs, target_ad, steps=40, lr=1e-2)
    peft_model.save_pretrained(str(tmp_path / "lora1"))
    assert (tmp_path / "lora1" / "adapter_config.json").exists()
    backend.load_policy("lora1", str(tmp_path / "lora1"), "lora")
    tuned = backend.generate(eval_qs, "lora1", n=2)
    assert share_of(tuned, target_ad.ad_id) > 0.5 > share_of(base, target_ad.ad_id)
    assert backend.generate(eval_qs, "base", n=2) == base  # merging into a copy left the base alone
    # A second version evicts the first from memory (max_loaded_policies=1); it reloads on demand.
    backend.load_policy("lora1b", str(tmp_path / "lora1"), "lora")
    assert backend.loaded_versions == ["base", "lora1b"]
    assert backend.generate(eval_qs, "lora1", n=2) == tuned
    assert backend.loaded_versions == ["base", "lora1"]


def test_candidate_selector_narrows_the_prompt(tiny_model_dir):
    seen = []

    def pick(q):
        seen.append(q.query_id)
        return q.candidates[:3]

    backend = make_backend("transformers", tiny_model_dir, num_threads=1, select=pick)
    qs = make_queries(2, seed=7)
    prompt = backend.prompts(qs)[0]
    assert prompt.count('{"Ad ID"') == 3
    backend.generate(qs, "base")
    assert seen[-2:] == [q.query_id for q in qs]
