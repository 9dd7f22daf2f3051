"""Fixtures for tests that need a real Ad-LLM: the tiny GPT-2, built once per test session.

``tiny_model_dir`` trains the tiny model (``llm_auction.models.tiny``, ~15-30 s on 2 cores)
into a session temp folder the first time any test asks for it. ``LLMA_TEST_TINY_MODEL`` may
name a folder built earlier with ``llm-auction models build-tiny`` to skip the build while
iterating. The build is memoized per process, so importing this fixture into a test module as
well as listing it as a plugin never builds twice.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

_BUILT: dict[str, Path] = {}

INTERESTS = ["coffee", "yoga", "camping", "home cooking", "cats", "running", "travel", "piano"]


def make_queries(n: int, seed: int = 1, n_candidates: int = 100) -> list:
    """``n`` query events over the catalog with random bids (deterministic for a seed)."""
    from llm_auction.schemas import CandidateAd, QueryEvent, UserProfile
    from llm_auction.schemas.catalog import load_catalog

    rng = random.Random(seed)
    ads = load_catalog()
    out = []
    for i in range(n):
        interests = rng.sample(INTERESTS, 3)
        out.append(
            QueryEvent(
                query_id=f"tq{seed}-{i}",
                user=UserProfile(user_id=f"u{i}", info="A 31-year-old teacher living in a small town, single.", interests=interests),
                query=f"Can you recommend some affordable essentials for {interests[0]}?",
                candidates=[CandidateAd(**a.model_dump(), bid=rng.randint(1, 100)) for a in rng.sample(ads, n_candidates)],
            )
        )
    return out


def _once(key: str, env: str, build) -> Path:
    """The folder for ``key``: ``$env`` when set (reuse a folder built earlier), else ``build()``, once per process."""
    if key not in _BUILT:
        given = os.environ.get(env)
        _BUILT[key] = Path(given) if given else build()
    return _BUILT[key]


def build_tiny_once(tmp_path_factory) -> Path:
    def build() -> Path:
        from llm_auction.models.tiny import TinyConfig, build_tiny

        out = tmp_path_factory.mktemp("tiny-gpt2")
        build_tiny(out, TinyConfig(seed=0), progress=False)
        return out

    return _once("tiny", "LLMA_TEST_TINY_MODEL", build)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder of the tiny GPT-2 Ad-LLM (transformers format), built once per session."""
    return build_tiny_once(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_adllm(tiny_model_dir):
    """A transformers-backend Ad-LLM over the tiny model, one CPU thread (fastest on a shared box)."""
    from llm_auction.models.backends import make_backend

    return make_backend("transformers", tiny_model_dir, num_threads=1)


def prepare_smollm2_once(tmp_path_factory) -> Path:
    def build() -> Path:
        from llm_auction.models.smollm2 import prepare_smollm2

        out = tmp_path_factory.mktemp("smol") / "smollm2"
        prepare_smollm2(out)
        return out

    return _once("smollm2", "LLMA_TEST_SMOLLM2_MODEL", build)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted from the offline GGUF wheel (~30-60 s once per session).

    ``LLMA_TEST_SMOLLM2_MODEL`` may name a folder prepared earlier with ``llm-auction models
    prepare-smollm2`` to skip the conversion while iterating."""
    return prepare_smollm2_once(tmp_path_factory)


def random_lora_adapter(base_dir, out, seed: int = 0, **lora) -> Path:
    """A PEFT LoRA adapter over ``base_dir`` whose B matrices are random (N(0, 0.3)), saved to ``out``.

    A stand-in for a trained policy version: unlike a fresh adapter (B = 0) it changes the
    answers, so which version wrote an answer is visible. ``lora`` goes to ``peft.LoraConfig``.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)), LoraConfig(**lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    model.save_pretrained(str(out))
    return Path(out)
