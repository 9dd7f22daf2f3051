"""The Ad-LLM interface without a model: sampling validation, the factory, policy-argument checks,
and the one-line error when vLLM (or a GPU) is missing."""

import sys

import pytest

from llm_auction.models.adllm import (
    AdLLMConfig,
    BackendUnavailable,
    SamplingConfig,
    UnknownPolicy,
    check_policy_args,
    prompt_messages,
)
from llm_auction.models.backends import make_backend
from llm_auction.schemas import CandidateAd, QueryEvent, UserProfile
from llm_auction.schemas.catalog import load_catalog


def test_sampling_defaults_and_validation():
    s = SamplingConfig()
    assert (s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (0.7, 0.8, 20, 160) and not s.greedy
    assert SamplingConfig(temperature=0).greedy
    for bad in ({"temperature": -0.1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


def test_config_validation(tmp_path):
    assert AdLLMConfig(model_path=str(tmp_path)).model_path == tmp_path
    for bad in ({"batch_size": 0}, {"max_loaded_policies": 0}, {"num_threads": 0}):
        with pytest.raises(ValueError):
            AdLLMConfig(model_path=tmp_path, **bad)


def test_make_backend_rejects_unknown_names_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="unknown Ad-LLM backend 'llama'"):
        make_backend("llama", tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        make_backend("transformers", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="vllm backend only"):
        make_backend("transformers", tmp_path, engine_kwargs={"max_model_len": 4096})


def test_vllm_missing_gives_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(BackendUnavailable) as e:
        make_backend("vllm", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("vllm backend:") and "transformers backend" in msg
    assert isinstance(e.value, RuntimeError)


def test_check_policy_args(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}")
    assert check_policy_args("v1", full, "full") == full
    assert check_policy_args("v2", str(lora), "lora") == lora
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        check_policy_args("v3", full, "lora")
    with pytest.raises(FileNotFoundError, match="no folder"):
        check_policy_args("v4", tmp_path / "missing", "full")
    with pytest.raises(ValueError, match="kind must be"):
        check_policy_args("v5", full, "delta")
    with pytest.raises(ValueError, match="empty version"):
        check_policy_args("", full, "full")


def test_unknown_policy_message_is_readable():
    assert str(UnknownPolicy("policy version 'v9' is not loaded")) == "policy version 'v9' is not loaded"
    assert isinstance(UnknownPolicy("x"), KeyError)


def test_prompt_messages_apply_the_selector_and_the_demonstration():
    ads = load_catalog()[:5]
    q = QueryEvent(
        query_id="q1", user=UserProfile(user_id="u", info="A chef.", interests=["coffee"]), query="Best coffee?",
        candidates=[CandidateAd(**a.model_dump(), bid=5) for a in ads],
    )
    msgs = prompt_messages(q, demonstration=True, select=lambda qq: qq.candidates[:2])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    listed = [c.ad_id for c in q.candidates if f'"Ad ID": "{c.ad_id}"' in msgs[0]["content"]]
    assert listed == [ads[0].ad_id, ads[1].ad_id]
    assert len(prompt_messages(q, demonstration=False)) == 2


def test_one_factory_opens_the_stored_backend_which_keeps_the_protocol():
    from llm_auction.models.adllm import AdLLM

    backend = make_backend("stored", base_version="v0")
    assert isinstance(backend, AdLLM) and backend.versions == ["v0"]
    queries = make_queries_for_stored()
    with pytest.raises(ValueError, match="1 policy versions for 2 queries"):
        backend.generate(queries, ["v0"])
    backend.load_policy("v1", "/nowhere", kind="lora")
    assert backend.versions == ["v0", "v1"]
    answers = backend.generate(queries, ["v0", "v1"], n=2)
    from llm_auction.auction import allocate

    assert [len(a) for a in answers] == [2, 2]
    for q, a in zip(queries, answers):  # the highest bid, with a correct marker
        assert allocate(a[0], q.candidates).exposed == (q.candidates.highest_bid().ad_id,)
    with pytest.raises(ValueError, match="needs a model folder"):
        make_backend("vllm")


def make_queries_for_stored():
    ads = load_catalog()[:3]
    user = UserProfile(user_id="u1", info="A reader.", interests=["books"])
    return [
        QueryEvent(query_id=f"q{i}", user=user, query="Any good reads?", candidates=[CandidateAd(**a.model_dump(), bid=10 + i + j) for j, a in enumerate(ads)])
        for i in range(2)
    ]
