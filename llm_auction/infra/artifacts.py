"""File hashes of published artifacts, and the check that a version folder is what was published.

The policy registry (``trainer/registry.py``) writes them at publication; a responder
(``consumers/control.py``) checks them before it loads a version it was told about. Both import
them from here because consumers may not import the trainer: one definition of the hash for the
writer and the reader.

A version folder holds its files and ``manifest.json``, whose ``file_sha256`` maps every file's
name (relative, posix) to its sha256 and whose ``sha256`` is :func:`folder_sha256` over that map.

A folder holding a pickle file (``.bin``, ``.pt``, ...) is refused even when its hashes match: a
hash proves the bytes are the published ones, not that loading them is safe, and a pickle runs
code when loaded (PEFT and transformers fall back to ``adapter_model.bin`` / ``pytorch_model.bin``
when no safetensors file is there). The registry refuses them at publication; this refuses a
folder that was written by other means.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

MANIFEST = "manifest.json"
# Files that are (or may be) Python pickles: never loaded from a published version.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ArtifactMismatch(ValueError):
    """A version folder whose files do not match its manifest or the announced hash; the message says which."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_sha256(file_sha256: Mapping[str, str]) -> str:
    """One sha256 over a set of files: each ``name\\0sha256\\n`` line, sorted by name.

    A rename, an added or removed file, or a changed byte changes it; the order files were
    written in does not.
    """
    h = hashlib.sha256()
    for name in sorted(file_sha256):
        h.update(f"{name}\0{file_sha256[name]}\n".encode())
    return h.hexdigest()


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by relative posix name, except the manifest (what the registry hashed)."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        name = p.relative_to(folder).as_posix()
        if p.is_file() and name != MANIFEST:
            out[name] = p
    return out


def verify_folder(folder: str | Path, expected_sha256: str | None = None) -> str:
    """Check every file of a published version folder against its manifest; return the folder hash.

    Refused (:class:`ArtifactMismatch`) when the folder holds a pickle file (``PICKLE_SUFFIXES``,
    whatever its hash), when the manifest is missing or unreadable, a file is
    missing, extra, or has another sha256 than ``file_sha256`` says, when the manifest's own
    ``sha256`` is not the hash over those files, or when ``expected_sha256`` (the announced
    one) differs. Every byte is read: the check costs one pass over the folder.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        listed = dict(manifest["file_sha256"])
        declared = str(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactMismatch(f"{folder}: no readable {MANIFEST} with file_sha256 and sha256 ({type(e).__name__}: {e})") from None
    found = folder_files(folder)
    pickles = sorted(n for n in found if n.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ArtifactMismatch(f"{folder}: pickle files are not loaded (safetensors and ONNX only): {pickles}")
    missing, extra = sorted(set(listed) - set(found)), sorted(set(found) - set(listed))
    if missing or extra:
        raise ArtifactMismatch(f"{folder}: files differ from the manifest (missing {missing}, unlisted {extra})")
    actual = {name: sha256_file(p) for name, p in found.items()}
    changed = sorted(n for n in listed if actual[n] != listed[n])
    if changed:
        raise ArtifactMismatch(f"{folder}: sha256 mismatch for {changed}")
    digest = folder_sha256(actual)
    if digest != declared:
        raise ArtifactMismatch(f"{folder}: folder sha256 {digest} differs from the manifest's {declared}")
    if expected_sha256 is not None and digest != expected_sha256:
        raise ArtifactMismatch(f"{folder}: folder sha256 {digest} differs from the announced {expected_sha256}")
    return digest


__all__ = ["MANIFEST", "PICKLE_SUFFIXES", "ArtifactMismatch", "folder_files", "folder_sha256", "sha256_file", "verify_folder"]
