"""numpy's ``default_rng(entropy).random()`` stream, computed with Python ints: the per-response RNG.

Contract: the embedding simulator draws each response's clicks from its own generator, seeded
from the simulator's seed and the response's id, so a response gets the same clicks in any batch
and any order. :class:`SeededPCG64` yields the same numbers as
``np.random.default_rng([seed, low, high]).random()``, bit for bit
(tests/unit/test_user_sim_rng.py compares both on thousands of seeds); numpy keeps these streams
stable across releases (NEP 19), so the transcription does not drift. It exists because building a
numpy generator per response cost more than scoring the response (per-response timings in
docs/benchmarks.md). The algorithms, from numpy's sources:

- ``SeedSequence`` (numpy/random/bit_generator.pyx): the entropy words are hashed into a pool of
  4 words, each pool word is mixed with the hash of every other, and the state words are hashes of
  the pool words in turn. The hash multipliers change after every use in a fixed sequence, so they
  are precomputed.
- ``PCG64`` (numpy/random/src/pcg64/pcg64.h): 4 state words read as two little-endian uint64 each
  make the 128-bit initial state and stream; every draw steps the 128-bit LCG and outputs the
  XSL-RR permutation of the new state.
- ``Generator.random()``: the output's top 53 bits, times 2**-53.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_M128 = (1 << 128) - 1
_POOL_SIZE = 4  # SeedSequence's default pool: 4 uint32 words
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_PCG64_MULT = 0x2360ED051FC65DA44385DF649FCCF645


def _hash_constants(init: int, mult: int, n: int) -> tuple[tuple[int, int], ...]:
    """(xor, multiplier) of SeedSequence's successive hashmix calls: the constant before and after its update."""
    out = []
    h = init
    for _ in range(n):
        nxt = (h * mult) & _M32
        out.append((h, nxt))
        h = nxt
    return tuple(out)


# mix_entropy: one hash per pool word, then one per ordered pair of distinct pool words
_ENTROPY_HASH = _hash_constants(0x43B0D7E5, 0x931E8875, _POOL_SIZE * _POOL_SIZE)
_PAIRS = tuple((src, dst) for src in range(_POOL_SIZE) for dst in range(_POOL_SIZE) if src != dst)
# generate_state(4, np.uint64): 8 uint32 words
_STATE_HASH = _hash_constants(0x8B51F9DD, 0x58F38DED, 8)


def seed_sequence_words(entropy: Sequence[int]) -> list[int]:
    """``np.random.SeedSequence(entropy).generate_state(8, np.uint32)`` as ints.

    ``entropy``: at most 4 words, each in [0, 2**32) (a longer entropy would take a further mixing
    step that this module does not need).
    """
    if len(entropy) > _POOL_SIZE or any(not 0 <= e <= _M32 for e in entropy):
        raise ValueError(f"entropy: expected at most {_POOL_SIZE} words in [0, 2**32), got {entropy!r}")
    pool = []
    for (x, m), e in zip(_ENTROPY_HASH, (*entropy, 0, 0, 0, 0)):
        v = ((e ^ x) * m) & _M32
        pool.append(v ^ (v >> 16))
    for (x, m), (src, dst) in zip(_ENTROPY_HASH[_POOL_SIZE:], _PAIRS):
        v = ((pool[src] ^ x) * m) & _M32
        r = (_MIX_MULT_L * pool[dst] - _MIX_MULT_R * (v ^ (v >> 16))) & _M32
        pool[dst] = r ^ (r >> 16)
    words = []
    for i, (x, m) in enumerate(_STATE_HASH):
        v = ((pool[i % _POOL_SIZE] ^ x) * m) & _M32
        words.append(v ^ (v >> 16))
    return words


class SeededPCG64:
    """The uniforms ``np.random.default_rng(entropy).random()`` draws, one per call.

    ``entropy`` as for :func:`seed_sequence_words` (e.g. ``[seed, low32, high32]``); many at once
    with :func:`seeded_streams`.
    """

    __slots__ = ("_state", "_inc")

    def __init__(self, entropy: Sequence[int]):
        self._set_seed(seed_sequence_words(entropy))

    @classmethod
    def _from_words(cls, words: Sequence[int]) -> "SeededPCG64":
        rng = cls.__new__(cls)
        rng._set_seed(words)
        return rng

    def _set_seed(self, w: Sequence[int]) -> None:
        # pcg64_set_seed: the uint64 pairs (w1 w0, w3 w2) and (w5 w4, w7 w6), high word first
        initstate = w[1] << 96 | w[0] << 64 | w[3] << 32 | w[2]
        initseq = w[5] << 96 | w[4] << 64 | w[7] << 32 | w[6]
        self._inc = ((initseq << 1) | 1) & _M128
        # pcg_setseq_128_srandom_r: state 0, step, add the initial state, step
        self._state = ((self._inc + initstate) * _PCG64_MULT + self._inc) & _M128

    def random(self) -> float:
        """The next uniform in [0, 1), as ``Generator.random()``."""
        s = self._state = (self._state * _PCG64_MULT + self._inc) & _M128
        x = ((s >> 64) ^ s) & _M64
        rot = s >> 122
        out = ((x >> rot) | (x << (64 - rot))) & _M64
        return (out >> 11) * (1.0 / 9007199254740992.0)


# Below this many streams, hashing them one by one in Python ints is cheaper: the numpy version is
# ~170 array operations, ~150 us whatever the batch size (measured break-even: 12-16 streams).
_VECTOR_MIN = 16
# the constants as numpy scalars: mixed with Python ints, uint32 arrays would first convert them
_U32_ENTROPY_HASH = tuple((np.uint32(x), np.uint32(m)) for x, m in _ENTROPY_HASH)
_U32_STATE_HASH = tuple((np.uint32(x), np.uint32(m)) for x, m in _STATE_HASH)
_U32_MIX_L, _U32_MIX_R, _U32_16 = np.uint32(_MIX_MULT_L), np.uint32(_MIX_MULT_R), np.uint32(16)


def seeded_streams(entropies: Sequence[Sequence[int]]) -> list[SeededPCG64]:
    """``[SeededPCG64(e) for e in entropies]``, the entropies all of one length.

    A batch's SeedSequence hashing runs as numpy uint32 arithmetic (which wraps around as C's
    does) on all its entropies at once. Per stream, seeding included: 3.6 us in a batch of 64 (the
    user-simulator service's batch size), against 12 us one by one.
    """
    if len(entropies) < _VECTOR_MIN:
        return [SeededPCG64(e) for e in entropies]
    ent = np.array(entropies, dtype=np.int64)
    if ent.ndim != 2 or ent.shape[1] > _POOL_SIZE or ent.min(initial=0) < 0 or ent.max(initial=0) > _M32:
        raise ValueError(f"entropies: expected rows of at most {_POOL_SIZE} words in [0, 2**32), got shape {ent.shape}")
    zeros = np.zeros(len(ent), np.uint32)
    cols = [ent[:, i].astype(np.uint32) if i < ent.shape[1] else zeros for i in range(_POOL_SIZE)]
    h = _U32_ENTROPY_HASH
    pool = []
    for (x, m), col in zip(h, cols):
        v = (col ^ x) * m
        pool.append(v ^ (v >> _U32_16))
    for (x, m), (src, dst) in zip(h[_POOL_SIZE:], _PAIRS):
        v = (pool[src] ^ x) * m
        r = _U32_MIX_L * pool[dst] - _U32_MIX_R * (v ^ (v >> _U32_16))
        pool[dst] = r ^ (r >> _U32_16)
    words = []
    for i, (x, m) in enumerate(_U32_STATE_HASH):
        v = (pool[i % _POOL_SIZE] ^ x) * m
        words.append(v ^ (v >> _U32_16))
    return [SeededPCG64._from_words(w) for w in np.stack(words, axis=1).tolist()]


__all__ = ["SeededPCG64", "seed_sequence_words", "seeded_streams"]
