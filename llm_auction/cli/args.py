"""Arguments several commands share, declared once: same flag, type, default and help wording.

Each helper adds its flags to an ``argparse`` parser. Defaults are ``None`` where the value comes
from settings at run time (``LLMA_SEED``, ``LLMA_DATA_DIR``), so ``--help`` stays instant and the
environment is read only by the handler.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

ENCODER_CACHE_DEFAULT = "<LLMA_DATA_DIR>/pctr/encoder-cache.npz"


def add_out(p: argparse.ArgumentParser, what: str, default: str | None = None) -> None:
    """``--out PATH``: where the command writes ``what``; required when there is no ``default`` (shown in the help)."""
    if default is None:
        p.add_argument("--out", type=Path, required=True, help=what)
    else:
        p.add_argument("--out", type=Path, default=None, help=f"{what} (default: {default})")


def add_seed(p: argparse.ArgumentParser, default: int | None = None) -> None:
    """``--seed N``: the random seed; ``None`` means the settings' ``LLMA_SEED``."""
    p.add_argument("--seed", type=int, default=default, help="random seed (default: LLMA_SEED)" if default is None else f"random seed (default {default})")


def add_encoder(p: argparse.ArgumentParser, default: str = "the bundled all-MiniLM-L6-v2", cache_use: str = "") -> None:
    """``--encoder DIR`` (a sentence-transformers folder) and ``--embedding-cache FILE`` (its .npz cache)."""
    p.add_argument("--encoder", type=Path, default=None, help=f"sentence-transformers folder (default: {default})")
    p.add_argument("--embedding-cache", type=Path, default=None, help=f"encoder cache .npz{cache_use} (default: {ENCODER_CACHE_DEFAULT})")


def registry_root(args) -> Path:
    """The model registry a command works on: its ``--out``, else ``LLMA_REGISTRY_DIR``, else
    ``<LLMA_DATA_DIR>/registry``."""
    from llm_auction.schemas.settings import get_settings

    return getattr(args, "out", None) or get_settings().resolved_registry_dir()


def load_encoder(path: str | Path | None = None):
    """One TextEncoder per model folder and process: loading MiniLM costs seconds, and its
    content-hash cache is worth keeping between commands run in one process (tests, notebooks)."""
    from llm_auction.models.encoder import default_encoder_path

    return _load_encoder(str(Path(path or default_encoder_path()).resolve()))


@functools.lru_cache(maxsize=2)
def _load_encoder(path: str):
    from llm_auction.models.encoder import TextEncoder

    return TextEncoder(path)
