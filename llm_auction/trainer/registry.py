"""A versioned, file-based model registry: ``<root>/<kind>/<kind>-NNNN/`` with a manifest.

One registry layout for pCTR models and Ad-LLM policy versions::

    <root>/pctr/pctr-0001/model.onnx        the main artifact (its sha256 is in the manifest)
                          model.json        anything else published with it (sidecar, weights)
                          manifest.json     version, parent, created, metrics, data window,
                                            sha256, file_sha256, promoted, n_train
    <root>/policy/policy-0001/adapter_model.safetensors   a LoRA adapter over the base model
                              adapter_config.json
                              irpo_samples.parquet         the epoch's audit files
                              irpo_pairs.parquet
                              manifest.json                parent, base model, pCTR version,
                                                           the epoch's config, data window, metrics

Identity: a pCTR version is its ONNX file's sha256; a policy version is a hash over ALL its files
(:func:`folder_sha256`: names and contents), because a PEFT folder's weights, config and audit
files together are the policy. ``file_sha256`` in the manifest holds every file's own sha256.
A policy folder holds only safetensors weights (no pickle: ``.bin``, ``.pt``, ``.pkl`` are refused).

Why it is shaped this way:

- **Atomic**: files are copied into a hidden temporary folder beside the versions and renamed
  into place; a reader sees a version completely or not at all, and a crash leaves only a
  ``.tmp-*`` folder that is never listed.
- **Monotonic**: the next number is one more than the highest ever published; publishers take
  an exclusive lock (``flock``), and the rename never replaces an existing version.
- **Private work folders**: a trainer builds a version in ``<root>/.work-*`` (:meth:`ModelRegistry.work_folder`),
  held by an ``flock`` for as long as it runs; the folder of a trainer that died is swept by the
  next one (:func:`remove_stale_work`), a live one's never.
- **Idempotent**: publishing the same main artifact (same sha256) for the same data window
  returns the existing version. A stream worker that restarts and retrains on the same window
  with the same seed reproduces the same bytes, so it does not publish a duplicate.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm_auction.infra.artifacts import folder_sha256, sha256_file  # one hash for writer and reader (consumers verify)
from llm_auction.logs import log_event
from llm_auction.schemas import PctrVersion, PolicyVersion

log = logging.getLogger(__name__)

Kind = Literal["pctr", "policy"]
KINDS: tuple[str, ...] = ("pctr", "policy")
MANIFEST = "manifest.json"
DEFAULT_MAIN = {"pctr": "model.onnx"}


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_policy_files(src: Mapping[str, Path], policy_kind: str) -> None:
    """A policy folder loads without pickle: refuse pickle files; a LoRA needs its config and safetensors."""
    bad = [n for n in src if n.lower().endswith(PICKLE_SUFFIXES)]
    if bad:
        raise ValueError(f"publish policy: pickle files are not accepted (safetensors only): {bad}")
    if policy_kind == "lora":
        if "adapter_config.json" not in src or not any(n.endswith(".safetensors") for n in src):
            raise ValueError(f"publish policy: a LoRA version needs adapter_config.json and a .safetensors file, got {sorted(src)}")


class Manifest(BaseModel):
    """What a published version is; written as ``manifest.json`` in its folder."""

    model_config = ConfigDict(extra="ignore")

    version: str
    kind: str
    number: int
    parent: str | None = None
    created: datetime
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_window: dict[str, Any] | None = None
    artifact: str  # file name of the main artifact inside the version folder
    sha256: str  # pCTR: the main artifact's; policy: folder_sha256 over every file
    files: list[str] = Field(default_factory=list)
    file_sha256: dict[str, str] = Field(default_factory=dict)
    promoted: bool = True
    n_train: int = 0
    extra: dict[str, Any] = Field(default_factory=dict)
    path: Path | None = Field(default=None, exclude=True)  # the version folder, set on read

    @property
    def artifact_path(self) -> Path:
        if self.path is None:
            raise ValueError(f"{self.version}: manifest not read from a registry")
        return self.path / self.artifact

    def numeric_metrics(self) -> dict[str, float]:
        """Metrics that are finite numbers (what the wire events carry)."""
        out = {}
        for k, v in self.metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[k] = float(v)
        return out

    def event_id(self) -> str:
        """Deterministic: announcing the same version twice (a restarted worker) gives the same
        ``event_id``, which consumers deduplicate on; a promotion change is a new event."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"llm-auction:{self.kind}:{self.version}:{self.sha256}:{int(self.promoted)}"))

    def to_event(self) -> PctrVersion | PolicyVersion:
        """The version as the event announced on ``auction.pctr-versions`` / ``auction.policy-versions``."""
        uri = self.artifact_path.resolve().as_uri()
        if self.kind == "pctr":
            return PctrVersion(
                event_id=self.event_id(),
                version=self.version,
                parent=self.parent,
                onnx_uri=uri,
                sha256=self.sha256,
                metrics=self.numeric_metrics(),
                promoted=self.promoted,
                n_train=self.n_train,
                ts=self.created,
            )
        if self.kind == "policy":
            if self.path is None:
                raise ValueError(f"{self.version}: manifest not read from a registry")
            # A plain folder path: what every backend's load_policy(version, uri, kind) opens.
            return PolicyVersion(
                event_id=self.event_id(),
                version=self.version,
                parent=self.parent,
                uri=str(self.path.resolve()),
                kind=self.extra.get("policy_kind", "full"),
                base_model=str(self.extra.get("base_model", "")),
                sha256=self.sha256,
                pctr_version=self.extra.get("pctr_version"),
                metrics=self.numeric_metrics(),
                ts=self.created,
            )
        raise ValueError(f"no event for kind {self.kind!r}")


class ModelRegistry:
    """Publish, list and look up versions of one kind of model under ``root/<kind>/``."""

    def __init__(self, root: str | Path, kind: Kind = "pctr"):
        if kind not in KINDS:
            raise ValueError(f"registry kind must be one of {KINDS}, got {kind!r}")
        self.root = Path(root)
        self.kind = kind
        self.dir = self.root / kind
        self._pattern = re.compile(rf"^{re.escape(kind)}-(\d{{4,}})$")

    # ---------------------------------------------------------------- reading
    def _read(self, folder: Path) -> Manifest | None:
        try:
            m = Manifest.model_validate_json((folder / MANIFEST).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        m.path = folder
        return m

    def list(self) -> list[Manifest]:
        """All versions, oldest first."""
        if not self.dir.exists():
            return []
        found = []
        for p in self.dir.iterdir():
            mt = self._pattern.match(p.name)
            if mt and p.is_dir():
                m = self._read(p)
                if m is not None:
                    found.append(m)
        return sorted(found, key=lambda m: m.number)

    def get(self, version: str) -> Manifest:
        if not self._pattern.match(version):
            raise ValueError(f"{version!r} is not a {self.kind} version (like {self.kind}-0001)")
        m = self._read(self.dir / version)
        if m is None:
            raise FileNotFoundError(f"registry {self.dir}: no version {version}")
        return m

    def latest(self, promoted_only: bool = True) -> Manifest | None:
        """The newest version (the newest promoted one by default), or None."""
        for m in reversed(self.list()):
            if m.promoted or not promoted_only:
                return m
        return None

    def find(self, sha256: str, data_window: Mapping[str, Any] | None) -> Manifest | None:
        """A version already holding this artifact for this data window."""
        want = dict(data_window) if data_window is not None else None
        for m in self.list():
            if m.sha256 == sha256 and m.data_window == want:
                return m
        return None

    # ---------------------------------------------------------------- writing
    @contextmanager
    def work_folder(self) -> Iterator[Path]:
        """A private, locked folder under the registry root to build a version in, removed on exit.

        Beside the versions (same file system: :meth:`publish` copies from it), never listed as
        one; work folders of trainers that died are swept first (:func:`remove_stale_work`).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_work(self.root)
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=self.root))
        lock = hold_work_lock(work)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
            lock.close()

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _next_number(self) -> int:
        nums = [int(mt.group(1)) for p in self.dir.iterdir() if (mt := self._pattern.match(p.name))]
        return max(nums, default=0) + 1

    @staticmethod
    def _sources(files: str | Path | Sequence[str | Path] | Mapping[str, str | Path]) -> dict[str, Path]:
        if isinstance(files, Mapping):
            src = {str(k): Path(v) for k, v in files.items()}
        elif isinstance(files, (str, Path)) and Path(files).is_dir():
            src = {p.relative_to(files).as_posix(): p for p in sorted(Path(files).rglob("*")) if p.is_file()}
        elif isinstance(files, (str, Path)):
            src = {Path(files).name: Path(files)}
        else:
            src = {Path(f).name: Path(f) for f in files}
        if not src:
            raise ValueError("publish: no files")
        for name, p in src.items():
            if not p.is_file():
                raise FileNotFoundError(f"publish: {p} is not a file")
            if name == MANIFEST:
                raise ValueError(f"publish: a file may not be named {MANIFEST}")
        return src

    def publish(
        self,
        files: str | Path | Sequence[str | Path] | Mapping[str, str | Path],
        metrics: Mapping[str, Any] | None = None,
        parent: str | None = None,
        data_window: Mapping[str, Any] | None = None,
        promoted: bool = True,
        *,
        main: str | None = None,
        n_train: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """Copy ``files`` (a folder, a list of paths, or {name: path}) into a new version.

        ``main`` names the main artifact (default: ``model.onnx`` for pCTR when present, else the
        first file). A pCTR version is identified by the main artifact's sha256, a policy version
        by :func:`folder_sha256` over all its files. Returns the existing version instead when
        the same identity was already published for the same ``data_window``.
        """
        src = self._sources(files)
        main = main or next((m for m in (DEFAULT_MAIN.get(self.kind),) if m in src), None) or next(iter(src))
        if main not in src:
            raise ValueError(f"publish: main artifact {main!r} is not among the files {sorted(src)}")
        pickles = [n for n in src if n.lower().endswith(PICKLE_SUFFIXES)]
        if pickles:  # every kind: nothing in the registry is loaded through pickle
            raise ValueError(f"publish {self.kind}: pickle files are not accepted (safetensors and ONNX only): {pickles}")
        if self.kind == "policy":
            check_policy_files(src, str((extra or {}).get("policy_kind", "full")))
        file_sha = {name: sha256_file(p) for name, p in src.items()}
        digest = folder_sha256(file_sha) if self.kind == "policy" else file_sha[main]
        window = json.loads(json.dumps(dict(data_window), default=str)) if data_window is not None else None
        with self._lock():
            existing = self.find(digest, window)
            if existing is not None:
                log_event(log, "registry: already published", kind=self.kind, version=existing.version, sha256=digest)
                return existing
            stage = self.dir / f".tmp-{uuid.uuid4().hex}"
            stage.mkdir()
            try:
                for name, p in src.items():
                    dst = stage / name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(p, dst)
                    if sha256_file(dst) != file_sha[name]:
                        raise OSError(f"publish: {name} changed while it was copied")
                number = self._next_number()
                manifest = Manifest(
                    version=f"{self.kind}-{number:04d}",
                    kind=self.kind,
                    number=number,
                    parent=parent,
                    created=datetime.now(timezone.utc),
                    metrics=json.loads(json.dumps(dict(metrics or {}), default=float)),
                    data_window=window,
                    artifact=main,
                    sha256=digest,
                    files=sorted(src),
                    file_sha256=dict(sorted(file_sha.items())),
                    promoted=promoted,
                    n_train=int(n_train),
                    extra=dict(extra or {}),
                )
                _write_json(stage / MANIFEST, manifest.model_dump(mode="json"))
                final = self.dir / manifest.version
                os.rename(stage, final)  # never replaces: the version folder is new, under the lock
            finally:
                if stage.exists():
                    shutil.rmtree(stage, ignore_errors=True)
        manifest.path = final
        log_event(log, "registry: published", kind=self.kind, version=manifest.version, parent=parent, sha256=digest, promoted=promoted)
        return manifest

    # ---------------------------------------------------------------- announcements
    def _announced_path(self, version: str) -> Path:
        self.get(version)  # a known version only
        return self.dir / ".announced" / f"{version}.json"

    def is_announced(self, version: str) -> bool:
        """Whether ``version`` was announced (a broker acknowledged its event; see :meth:`mark_announced`)."""
        return self._announced_path(version).exists()

    def mark_announced(self, version: str, event_id: str, topic: str) -> None:
        """Record that the broker acknowledged ``version``'s event, so a retry does not announce it again.

        Kept beside the versions (``.announced/``), not in the version folder: a version's files,
        and so its hash, never change after publication. A crash between the broker's ack and this
        record announces twice with the same deterministic ``event_id``, which consumers dedup on.
        """
        path = self._announced_path(version)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, {"version": version, "event_id": event_id, "topic": topic, "ts": datetime.now(timezone.utc).isoformat()})

    def set_promoted(self, version: str, promoted: bool = True) -> Manifest:
        """Promote or demote an existing version (its manifest is rewritten atomically)."""
        with self._lock():
            m = self.get(version)
            m.promoted = promoted
            _write_json(m.path / MANIFEST, m.model_dump(mode="json"))
        return m


WORK_PREFIX = ".irpo-work-"
WORK_LOCK = ".owner.lock"
STALE_UNLOCKED_S = 600.0  # a work folder without its lock file is only this old while mkdtemp -> flock runs


def hold_work_lock(work: Path):
    """Lock ``work`` for as long as the returned file is open; the kernel drops the lock when the process dies."""
    f = (work / WORK_LOCK).open("a")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def remove_stale_work(root: Path) -> list[Path]:
    """Delete the work folders under ``root`` of trainers that died (killed during DPO): their lock is free.

    A live trainer holds an exclusive ``flock`` on its folder's lock file, so its folder is never
    taken; a folder without a lock file is removed only when it is older than ``STALE_UNLOCKED_S``.
    Returns the folders removed.
    """
    removed = []
    for work in sorted(Path(root).glob(f"{WORK_PREFIX}*")):
        if not work.is_dir():
            continue
        lock_path = work / WORK_LOCK
        try:
            if lock_path.exists():
                with lock_path.open("a") as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a running trainer owns it
            elif time.time() - work.stat().st_mtime < STALE_UNLOCKED_S:
                continue
        except FileNotFoundError:
            continue  # its trainer finished meanwhile
        shutil.rmtree(work, ignore_errors=True)
        removed.append(work)
        log_event(log, "registry: removed the work folder of a dead trainer", path=str(work))
    return removed


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, allow_nan=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
