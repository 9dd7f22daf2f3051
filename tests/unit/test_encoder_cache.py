"""The text encoder's cache is a bounded LRU: it stays within its bytes, still hits, and evicts
the least recently used text (the user simulator encodes every answer it ever reads)."""

import numpy as np
import pytest

from llm_auction.models.encoder import ENTRY_OVERHEAD_BYTES, TextEncoder


class CountingModel:
    """The sentence-transformers model, counting the texts it is asked to encode."""

    def __init__(self, model):
        self.model = model
        self.texts: list[str] = []

    def encode(self, texts, **kw):
        self.texts += list(texts)
        return self.model.encode(texts, **kw)


@pytest.fixture(scope="module")
def bounded():
    enc = TextEncoder(cache_bytes=10 * (384 * 4 + ENTRY_OVERHEAD_BYTES))  # room for 10 MiniLM vectors
    enc.model = CountingModel(enc.model)
    return enc


def test_the_cache_stays_within_its_bound_and_answers_batches_larger_than_itself(bounded, text_encoder):
    enc = bounded
    texts = [f"answer number {i} about herbal tea" for i in range(25)]
    got = enc.encode(texts)
    assert enc.max_entries == 10 and len(enc) == 10
    np.testing.assert_allclose(got, text_encoder.encode(texts), atol=1e-5)  # every row, not only the cached ones
    for start in range(0, 500, 7):  # a long stream of new texts
        enc.encode([f"stream text {i}" for i in range(start, start + 7)])
        assert len(enc) <= 10
    cached = list(enc._cache.values())
    assert all(v.base is None for v in cached)  # own copies: an evicted row frees its memory
    assert sum(v.nbytes + ENTRY_OVERHEAD_BYTES for v in cached) <= 10 * (384 * 4 + ENTRY_OVERHEAD_BYTES)


def test_recent_texts_hit_and_the_least_recently_used_is_evicted(bounded):
    enc = bounded
    enc.model.texts.clear()
    first = [f"hit test {i}" for i in range(10)]
    a = enc.encode(first)
    assert enc.model.texts == first
    b = enc.encode(first[::-1])  # all ten are cached: no model call
    assert enc.model.texts == first and np.array_equal(b, a[::-1])
    # use order now: 9, 8, ..., 0 (the reversed pass); using 9 again leaves 8 the least recently used
    enc.encode([first[9]])
    enc.encode(["one new text"])  # an eleventh text evicts it
    enc.model.texts.clear()
    enc.encode([first[9]])
    assert enc.model.texts == []  # kept: it was used just before the new text came
    enc.encode([first[8]])
    assert enc.model.texts == [first[8]]  # evicted: the least recently used (the reversed pass used it first)


def test_a_saved_cache_loads_within_the_bound(bounded, tmp_path):
    enc = bounded
    big = TextEncoder.__new__(TextEncoder)  # an unbounded cache to save, without loading a model
    big.dim, big.max_entries = 384, None
    big._cache = type(enc._cache)()
    for i in range(30):
        big._put(f"k{i}", np.full(384, i, np.float32))
    big.save_cache(tmp_path / "c.npz")
    enc._cache.clear()
    assert enc.load_cache(tmp_path / "c.npz") == 30
    assert list(enc._cache) == [f"k{i}" for i in range(20, 30)] and enc._cache["k29"][0] == 29.0
