"""A deterministic stand-in for the MiniLM text encoder, for unit tests of the logic around it.

``HashEncoder(dim)`` maps each text to a unit vector seeded by a hash of the text (stable across
processes, unlike ``hash()``). Tests that learn from real embeddings use the real encoder
(``text_encoder`` in conftest.py).
"""

from __future__ import annotations

import hashlib

import numpy as np


class HashEncoder:
    """``encode(texts)`` -> float32 unit vectors [len(texts), dim], one per text, the same for the same text."""

    path = "hash-encoder"

    def __init__(self, dim: int = 16):
        self.dim = dim

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            v = np.random.default_rng(int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big")).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out
