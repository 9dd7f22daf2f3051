"""The per-response RNG of the embedding simulator: numpy's default_rng, seeded from the seed and the response."""

import hashlib

import numpy as np

from llm_auction.models.user_sim.embedding import ClickModelConfig, EmbeddingUserSimulator

M32 = 0xFFFFFFFF


def test_simulator_draws_are_those_of_default_rng_seeded_from_seed_and_key():
    sim = EmbeddingUserSimulator(encoder=object(), config=ClickModelConfig(), seed=2**33 + 11)  # the encoder is not used here
    for i in range(50):
        key = f"resp-{i}"
        h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        ref = np.random.default_rng([sim.seed & M32, h & M32, h >> 32])
        rng = sim._rng(key)
        assert rng.random(3).tolist() == ref.random(3).tolist()
