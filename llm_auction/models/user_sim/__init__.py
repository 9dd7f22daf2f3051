"""The user simulator: the environment's ground truth for clicks (paper appendix B.1's User-LLM).

Two backends behind one protocol (:class:`UserSimulator`):

- ``embedding`` (CPU default): :class:`EmbeddingUserSimulator`, a calibrated stochastic click model
  of the paper's criteria (relevance, nativeness, competitiveness, flooding) on sentence
  embeddings. Its click probabilities are exact, so they double as the oracle pCTR.
- ``llm``: :class:`LLMUserSimulator`, the paper-structured click prompt on a local causal LM, its
  JSON reply parsed strictly with a repair-or-reject path (:func:`parse_click_feedback`).

Backends import lazily: choosing ``embedding`` never loads a causal LM, and the reverse.
"""

from __future__ import annotations

from typing import Any, Literal

from .base import Decision, UserSimulator, build_click_events, click_event_id
from .feedback import parse_click_feedback


def make_user_simulator(name: Literal["embedding", "llm"], seed: int, **kw: Any) -> UserSimulator:
    """Build a backend by name.

    ``embedding``: ``encoder`` (a shared ``TextEncoder``; default: the bundled MiniLM), ``config``
    (a ``ClickModelConfig``). ``llm``: ``generate_fn`` (prompts -> replies) or ``model_path``
    (+ ``gguf_file``), and the sampling options of :class:`LLMUserSimulator`.
    """
    if name == "embedding":
        from .embedding import EmbeddingUserSimulator

        return EmbeddingUserSimulator(encoder=kw.pop("encoder", None), config=kw.pop("config", None), seed=seed, **kw)
    if name == "llm":
        from .llm import LLMUserSimulator

        return LLMUserSimulator(seed=seed, **kw)
    raise ValueError(f"user simulator: unknown backend {name!r} (expected 'embedding' or 'llm')")


def __getattr__(name: str) -> Any:
    if name in {"EmbeddingUserSimulator", "ClickModelConfig", "AdFeatures", "Scene"}:
        from . import embedding

        return getattr(embedding, name)
    if name in {"LLMUserSimulator", "TransformersGenerator", "build_click_prompt"}:
        from . import llm

        return getattr(llm, name)
    raise AttributeError(name)


__all__ = [
    "Decision", "UserSimulator", "build_click_events", "click_event_id", "make_user_simulator", "parse_click_feedback",
    "EmbeddingUserSimulator", "ClickModelConfig", "AdFeatures", "Scene", "LLMUserSimulator", "TransformersGenerator",
    "build_click_prompt",
]
