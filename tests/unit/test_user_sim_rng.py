"""The per-response RNG of the embedding simulator: numpy's default_rng stream, bit for bit."""

import hashlib
import random

import numpy as np
import pytest

from llm_auction.models.user_sim.embedding import ClickModelConfig, EmbeddingUserSimulator
from llm_auction.models.user_sim.rng import SeededPCG64, seed_sequence_words, seeded_streams

M32 = 0xFFFFFFFF


def _entropies(n: int) -> list[list[int]]:
    rnd = random.Random(0)
    edges = [[0, 0, 0], [M32, M32, M32], [3, 0, 5], [7], [], [1, 2, 3, 4], [M32, 0]]
    return edges + [[rnd.getrandbits(32) for _ in range(rnd.choice((1, 2, 3, 3, 3, 4)))] for _ in range(n)]


def test_seed_sequence_words_are_numpys():
    for e in _entropies(2000):
        assert seed_sequence_words(e) == np.random.SeedSequence(e).generate_state(8, np.uint32).tolist(), e


def test_uniforms_are_numpys_default_rng_draws():
    for e in _entropies(2000):
        ours = SeededPCG64(e)
        assert [ours.random() for _ in range(5)] == np.random.default_rng(e).random(5).tolist(), e


@pytest.mark.parametrize("bad", [[1, 2, 3, 4, 5], [-1], [1 << 32]])
def test_entropy_outside_what_it_transcribes_is_refused(bad):
    with pytest.raises(ValueError, match="entropy"):
        SeededPCG64(bad)


def test_simulator_draws_are_those_of_default_rng_seeded_from_seed_and_key():
    sim = EmbeddingUserSimulator(encoder=object(), config=ClickModelConfig(), seed=2**33 + 11)  # the encoder is not used here
    for i in range(500):
        key = f"resp-{i}"
        h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        ref = np.random.default_rng([sim.seed & M32, h & M32, h >> 32])
        rng = sim._rng(key)
        assert [rng.random() for _ in range(3)] == ref.random(3).tolist()


@pytest.mark.parametrize("n", [1, 15, 16, 64, 300])
def test_batched_seeding_gives_the_same_streams(n):
    rnd = random.Random(n)
    for width in (1, 3, 4):
        ents = [[rnd.getrandbits(32) for _ in range(width)] for _ in range(n - 1)] + [[M32] * width]
        streams = seeded_streams(ents)
        assert [[s.random() for _ in range(3)] for s in streams] == [np.random.default_rng(e).random(3).tolist() for e in ents]
    with pytest.raises(ValueError, match="entropies"):
        seeded_streams([[1, 2, 3, 4, 5]] * 16)
    assert seeded_streams([]) == []
