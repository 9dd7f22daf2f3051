"""IRPO's reward: which click probabilities Eq. 8 uses, chosen by one rule for every caller.

The loop, ``irpo run-epoch``, ``irpo evaluate``, the trainer service and the benchmarks all open
the reward here, so ``auto`` means the same everywhere:

- ``pctr``: an ONNX pCTR version of the registry (a named one, else the latest promoted), scored
  with onnxruntime; no such version is an error (:class:`NoRewardModel`);
- ``oracle``: the user simulator's exact click probabilities (the paper's "LLM-Auction (Oracle)");
- ``auto``: ``pctr`` once a version has passed its promotion gate, the oracle before.

A reward is a :data:`PctrFn` (many answers' exposed ads scored in one batch) with the name of
what it is (a pCTR version, or ``"oracle"``), which the policy version's manifest records.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from llm_auction.mechanisms.base import ScoreFn
from llm_auction.schemas import QueryEvent

from .registry import ModelRegistry

RewardMode = Literal["pctr", "oracle", "auto"]
REWARD_MODES: tuple[str, ...] = ("pctr", "oracle", "auto")
ORACLE = "oracle"

PctrFn = ScoreFn  # (query, answer text, exposed ad ids) per answer -> {ad id: click probability} per answer


class NoRewardModel(ValueError):
    """``pctr`` was asked for and the registry holds no promoted (or no such) pCTR version."""


class Reward(NamedTuple):
    score: PctrFn
    version: str  # the pCTR version, or "oracle"

    @property
    def oracle(self) -> bool:
        return self.version == ORACLE


def onnx_pctr(scorer) -> PctrFn:
    """pCTR of every exposed ad of many answers, with one encoder call and one onnxruntime run."""

    def score(items: Sequence[tuple[QueryEvent, str, Sequence[str]]]) -> list[dict[str, float]]:
        rows = [(q, text, ad) for q, text, ads in items for ad in ads]
        if not rows:
            return [{} for _ in items]
        texts = list(dict.fromkeys([t for q, text, _ in rows for t in (q.query, text)]))
        vecs = scorer.encoder.encode(texts)
        at = {t: i for i, t in enumerate(texts)}
        p = scorer.score_rows(
            vecs[[at[q.query] for q, _, _ in rows]], vecs[[at[text] for _, text, _ in rows]],
            [q.user.user_id for q, _, _ in rows], [ad for _, _, ad in rows],
        )
        out, k = [], 0
        for _, _, ads in items:
            out.append({ad: float(p[k + j]) for j, ad in enumerate(ads)})
            k += len(ads)
        return out

    return score


def oracle_pctr(simulator) -> PctrFn:
    """The user simulator's exact click probabilities (the paper's LLM-Auction (Oracle) reward)."""

    def score(items: Sequence[tuple[QueryEvent, str, Sequence[str]]]) -> list[dict[str, float]]:
        return simulator.answer_probabilities([(q, text) for q, text, _ in items])

    return score


def open_reward(
    mode: RewardMode,
    *,
    settings,
    encoder,
    registry_root: str | Path | None = None,
    pctr_version: str | None = None,
    simulator=None,
) -> Reward:
    """The reward ``mode`` asks for (module docstring).

    ``registry_root`` defaults to ``settings.resolved_registry_dir()``; ``pctr_version`` names a
    pCTR version (default: the latest promoted); ``simulator`` is the user simulator to take exact
    probabilities from (default: the embedding simulator seeded with ``LLMA_SEED``).
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"reward must be one of {REWARD_MODES}, got {mode!r}")
    if mode != ORACLE:
        registry = ModelRegistry(registry_root or settings.resolved_registry_dir(), "pctr")
        manifest = registry.get(pctr_version) if pctr_version else registry.latest()
        if manifest is not None:
            from llm_auction.models.pctr import PctrScorer

            return Reward(onnx_pctr(PctrScorer(manifest.artifact_path, encoder=encoder)), manifest.version)
        if mode == "pctr":
            raise NoRewardModel(
                f"no promoted pCTR version in {registry.dir} (its gate: LLMA_PCTR_MIN_AUC={settings.pctr_min_auc}); "
                "train one (`llm-auction pctr train`), serve more queries, or use --reward auto|oracle"
            )
    if simulator is None:
        from llm_auction.models.user_sim import make_user_simulator

        simulator = make_user_simulator("embedding", seed=settings.seed, encoder=encoder)
    return Reward(oracle_pctr(simulator), ORACLE)


__all__ = ["NoRewardModel", "ORACLE", "PctrFn", "REWARD_MODES", "Reward", "RewardMode", "onnx_pctr", "open_reward", "oracle_pctr"]
