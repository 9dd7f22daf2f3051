"""Fixtures for tests that need a real Ad-LLM: the tiny GPT-2, built once per test session.

``tiny_model_dir`` trains the tiny model (``llm_auction.models.tiny``, ~15-30 s on 2 cores)
into a session temp folder the first time any test asks for it. ``LLMA_TEST_TINY_MODEL`` may
name a folder built earlier with ``llm-auction models build-tiny`` to skip the build while
iterating. The build is memoized per process, so importing this fixture into a test module as
well as listing it as a plugin never builds twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_BUILT: dict[str, Path] = {}


def build_tiny_once(tmp_path_factory) -> Path:
    if "tiny" not in _BUILT:
        given = os.environ.get("LLMA_TEST_TINY_MODEL")
        if given:
            _BUILT["tiny"] = Path(given)
        else:
            from llm_auction.models.tiny import TinyConfig, build_tiny

            out = tmp_path_factory.mktemp("tiny-gpt2")
            build_tiny(out, TinyConfig(seed=0), progress=False)
            _BUILT["tiny"] = out
    return _BUILT["tiny"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder of the tiny GPT-2 Ad-LLM (transformers format), built once per session."""
    return build_tiny_once(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_adllm(tiny_model_dir):
    """A transformers-backend Ad-LLM over the tiny model, one CPU thread (fastest on a shared box)."""
    from llm_auction.models.adllm import make_backend

    return make_backend("transformers", tiny_model_dir, num_threads=1)
