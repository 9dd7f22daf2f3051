"""The pCTR reward model of Eq. 3, its ONNX export, and the onnxruntime scorer the auction uses.

    pctr(x, h, a, y) = sigmoid(MLP([phi(x); phi(y); e_h; e_a]))

phi is the frozen text encoder (:mod:`llm_auction.models.encoder`), applied to the query x
and to the ad-integrated answer y; e_h (64-d) and e_a (32-d) are learned user and ad
embeddings; the MLP is 128-64-32 then a linear layer to one logit (paper appendix B.2.2).

Ids are hashed into a fixed number of buckets (:class:`IdHasher`) so that the network never
needs a vocabulary and a new user or ad never raises. Bucket 0 is the learned "unknown" row:
empty ids hash there, and the network routes every bucket it was never trained on to it
(``user_route``/``ad_route`` buffers), so a cold-start user is scored as the average user
rather than by an untrained random row. The trainer teaches row 0 by id dropout.

The network is served as ONNX by onnxruntime (:class:`PctrScorer`): :func:`export_onnx`
refuses to write a file whose outputs differ from torch by 1e-5 or more, so nothing that
disagrees with the trained weights can be published.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm_auction.schemas.ids import stable_hash

INPUT_NAMES = ("query_emb", "answer_emb", "user_idx", "ad_idx")
OUTPUT_NAME = "pctr"
ONNX_OPSET = 17
VERIFY_TOL = 1e-5
SIDECAR_FORMAT = "llm-auction-pctr"
USER_SALT = "user:"
AD_SALT = "ad:"
ID_HASH = "sha256-64"  # IdHasher's hash as the sidecar names it (models exported before it used "crc32")


class OnnxMismatchError(ValueError):
    """onnxruntime's outputs differ from torch's beyond tolerance; the export is not usable."""


class ArtifactMismatchError(ValueError):
    """An ONNX file (or its sidecar) whose sha256 is not the published one: truncated, altered or
    replaced after publication. The scorer refuses it; the message names the file and both hashes."""


def _sha256_file(path: Path) -> str:
    # Models may not import infra (import-linter layers), where the registry's own hash lives
    # (infra/artifacts.sha256_file); this is the same plain sha256 of the bytes.
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify_published(onnx_path: str | Path, expected_sha256: str | None = None) -> str:
    """Check an ONNX pCTR file before it is loaded; return its sha256.

    Refused (:class:`ArtifactMismatchError`) when its sha256 differs from ``expected_sha256`` (the
    one a ``PctrVersion`` event announced) or, in a registry version folder (a ``manifest.json``
    beside it), from the manifest's ``sha256`` (a pCTR version's identity is its ONNX file's hash)
    or ``file_sha256`` entry, or when the sidecar's differs from its ``file_sha256`` entry. A file
    outside a registry with no expected hash is only hashed.
    """
    path = Path(onnx_path)
    actual = _sha256_file(path)
    if expected_sha256 is not None and actual != expected_sha256:
        raise ArtifactMismatchError(f"pctr: {path} has sha256 {actual}, not the announced {expected_sha256}: refused")
    manifest = path.parent / "manifest.json"
    if manifest.exists():
        try:
            m = json.loads(manifest.read_text(encoding="utf-8"))
            listed = dict(m.get("file_sha256") or {})
        except (OSError, ValueError, TypeError) as e:
            raise ArtifactMismatchError(f"pctr: {manifest} is unreadable ({type(e).__name__}): {path} refused") from None
        want = listed.get(path.name) or (m.get("sha256") if m.get("artifact") == path.name else None)
        if want is not None and actual != want:
            raise ArtifactMismatchError(f"pctr: {path} has sha256 {actual}, the registry published {want}: refused")
        side = sidecar_path(path)
        if side.name in listed and side.exists() and _sha256_file(side) != listed[side.name]:
            raise ArtifactMismatchError(f"pctr: sidecar {side} differs from the published one (sha256): {path} refused")
    return actual


class IdHasher:
    """Stable id -> bucket map: ``1 + stable_hash(salt, id) % (n_buckets - 1)``, and 0 for empty ids.

    A stable hash (not Python's ``hash``) so that buckets agree across processes and machines;
    the salt keeps users and ads from sharing collision patterns. The sidecar of an exported
    model names the hash (:data:`ID_HASH`), and :class:`PctrScorer` refuses a model hashed
    otherwise. Results are memoized: traffic repeats ids.
    """

    def __init__(self, n_buckets: int, salt: str = ""):
        if n_buckets < 2:
            raise ValueError(f"n_buckets must be at least 2 (bucket 0 is 'unknown'), got {n_buckets}")
        self.n_buckets = int(n_buckets)
        self.salt = salt
        self._memo: dict[Any, int] = {}

    def bucket(self, id_: str | None) -> int:
        b = self._memo.get(id_)
        if b is None:
            if id_ is None or (isinstance(id_, float) and id_ != id_) or str(id_).strip() == "":
                b = 0
            else:
                b = 1 + stable_hash(self.salt, str(id_)) % (self.n_buckets - 1)
            if len(self._memo) < 1_000_000:
                self._memo[id_] = b
        return b

    def __call__(self, ids: Sequence[str | None]) -> np.ndarray:
        return np.fromiter((self.bucket(i) for i in ids), dtype=np.int64, count=len(ids))

    def config(self) -> dict:
        return {"n_buckets": self.n_buckets, "salt": self.salt, "hash": ID_HASH}


class PctrNet(nn.Module):
    """Eq. 3: query/answer embeddings, user/ad ids -> click probability [B]."""

    def __init__(
        self,
        text_dim: int = 384,
        user_buckets: int = 16384,
        ad_buckets: int = 1024,
        user_dim: int = 64,
        ad_dim: int = 32,
        hidden: Sequence[int] = (128, 64, 32),
    ):
        super().__init__()
        self.hparams = {
            "text_dim": int(text_dim),
            "user_buckets": int(user_buckets),
            "ad_buckets": int(ad_buckets),
            "user_dim": int(user_dim),
            "ad_dim": int(ad_dim),
            "hidden": [int(h) for h in hidden],
        }
        self.user_emb = nn.Embedding(user_buckets, user_dim)
        self.ad_emb = nn.Embedding(ad_buckets, ad_dim)
        # Small init: id rows start on the scale of the unit-norm text features (~0.05 per
        # coordinate) instead of N(0, 1), which would drown the text in noise at step 0.
        nn.init.normal_(self.user_emb.weight, std=0.05)
        nn.init.normal_(self.ad_emb.weight, std=0.05)
        # route[b] = b for buckets seen in training, else 0 (the unknown row). Buffers, so they
        # travel in the state dict (warm starts keep them) and into the ONNX graph.
        self.register_buffer("user_route", torch.zeros(user_buckets, dtype=torch.int64))
        self.register_buffer("ad_route", torch.zeros(ad_buckets, dtype=torch.int64))
        layers: list[nn.Module] = []
        d = 2 * text_dim + user_dim + ad_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(d, 1)

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "PctrNet":
        return cls(**{k: hp[k] for k in ("text_dim", "user_buckets", "ad_buckets", "user_dim", "ad_dim", "hidden")})

    @torch.no_grad()
    def mark_seen(self, user_idx: torch.Tensor | np.ndarray, ad_idx: torch.Tensor | np.ndarray) -> None:
        """Route these buckets to their own rows from now on (the trainer calls it on train ids)."""
        u = torch.as_tensor(np.asarray(user_idx), dtype=torch.int64).unique()
        a = torch.as_tensor(np.asarray(ad_idx), dtype=torch.int64).unique()
        self.user_route[u] = u
        self.ad_route[a] = a

    def logits(self, query_emb: torch.Tensor, answer_emb: torch.Tensor, user_idx: torch.Tensor, ad_idx: torch.Tensor) -> torch.Tensor:
        e_h = self.user_emb(self.user_route[user_idx])
        e_a = self.ad_emb(self.ad_route[ad_idx])
        x = torch.cat([query_emb, answer_emb, e_h, e_a], dim=-1)
        return self.head(self.mlp(x)).squeeze(-1)

    def forward(self, query_emb: torch.Tensor, answer_emb: torch.Tensor, user_idx: torch.Tensor, ad_idx: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(query_emb, answer_emb, user_idx, ad_idx))


CHECKPOINT = "model.safetensors"  # the torch weights in a registry version, beside model.onnx


def save_checkpoint(net: PctrNet, path: str | Path) -> Path:
    """The torch weights, what the next retrain warm-starts from: safetensors (no pickle in the
    registry), the hyperparameters as JSON in its metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(tmp), metadata={"hparams": json.dumps(net.hparams)})
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> PctrNet:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        hparams = json.loads((f.metadata() or {})["hparams"])
    net = PctrNet.from_hparams(hparams)
    net.load_state_dict(load_file(str(path)))
    return net


def random_batch(n: int, text_dim: int, user_buckets: int, ad_buckets: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A synthetic input batch (unit-norm embeddings, ids including the unknown bucket 0)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, text_dim)).astype(np.float32)
    a = rng.standard_normal((n, text_dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    u = rng.integers(0, user_buckets, n, dtype=np.int64)
    d = rng.integers(0, ad_buckets, n, dtype=np.int64)
    if n:
        u[0] = 0
        d[0] = 0
    return q, a, u, d


def _providers(preferred: Sequence[str] | None = None) -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    want = list(preferred) if preferred else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    got = [p for p in want if p in avail]
    return got or ["CPUExecutionProvider"]


def _session(path: Path, providers: Sequence[str] | None = None, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=_providers(providers))


def _run(sess, q: np.ndarray, a: np.ndarray, u: np.ndarray, d: np.ndarray) -> np.ndarray:
    feeds = dict(zip(INPUT_NAMES, (q, a, u, d)))
    return sess.run([OUTPUT_NAME], feeds)[0]


def sidecar_path(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def export_onnx(
    net: PctrNet,
    path: str | Path,
    dim: int | None = None,
    *,
    encoder: str | None = None,
    user_salt: str = USER_SALT,
    ad_salt: str = AD_SALT,
    verify_batch: tuple[np.ndarray, ...] | None = None,
    tol: float = VERIFY_TOL,
) -> Path:
    """Export ``net`` to ONNX at ``path`` (dynamic batch), verified against torch, plus a sidecar.

    The graph is written to a temporary file first and scored by onnxruntime on a held-out
    batch (``verify_batch``, else a random one) and on a batch of one; only if the max abs
    difference to torch is below ``tol`` are the ONNX file and its sidecar JSON (text dim,
    hash buckets and salts, encoder) moved into place. Raises :class:`OnnxMismatchError`
    otherwise, leaving nothing behind.
    """
    path = Path(path)
    hp = net.hparams
    dim = hp["text_dim"] if dim is None else int(dim)
    if dim != hp["text_dim"]:
        raise ValueError(f"dim={dim} but the network was built for text_dim={hp['text_dim']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    was_device = next(net.parameters()).device
    net_cpu = net.to("cpu")
    example = tuple(torch.from_numpy(x) for x in random_batch(2, dim, hp["user_buckets"], hp["ad_buckets"], seed=1))
    fd, tmp_name = tempfile.mkstemp(prefix=".pctr-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter (dynamo=False) needs nothing beyond torch and onnx; its
            # deprecation notices are noise here. Tracer warnings still show.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                net_cpu,
                example,
                str(tmp),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes={**{n: {0: "batch"} for n in INPUT_NAMES}, OUTPUT_NAME: {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        batches = [verify_batch if verify_batch is not None else random_batch(512, dim, hp["user_buckets"], hp["ad_buckets"], seed=2)]
        batches.append(tuple(x[:1] for x in batches[0]))
        sess = _session(tmp, providers=["CPUExecutionProvider"])
        max_diff = 0.0
        with torch.no_grad():
            for b in batches:
                ref = net_cpu(*(torch.from_numpy(np.ascontiguousarray(x)) for x in b)).numpy()
                got = _run(sess, *b)
                if got.shape != ref.shape:
                    raise OnnxMismatchError(f"onnx output shape {got.shape} != torch {ref.shape}")
                max_diff = max(max_diff, float(np.max(np.abs(got - ref))) if ref.size else 0.0)
        if not max_diff < tol:
            raise OnnxMismatchError(f"onnxruntime differs from torch by {max_diff:.3g} (tolerance {tol:g})")
        side = {
            "format": SIDECAR_FORMAT,
            "format_version": 1,
            **hp,
            "user_hash": IdHasher(hp["user_buckets"], user_salt).config(),
            "ad_hash": IdHasher(hp["ad_buckets"], ad_salt).config(),
            "encoder": encoder,
            "inputs": list(INPUT_NAMES),
            "output": OUTPUT_NAME,
            "opset": ONNX_OPSET,
            "verify_max_abs_diff": max_diff,
        }
        sidecar_path(path).write_text(json.dumps(side, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o644)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        net.to(was_device)
    return path


class PctrScorer:
    """Scores (query, answer, user, ads) with an exported pCTR model through onnxruntime.

    ``score(...)`` returns ``{ad_id: probability}``, what
    ``llm_auction.auction.reward(allocation, bids, pctr=...)`` consumes. The text encoder is
    loaded lazily (from the sidecar's path, else the bundled MiniLM) unless one is passed in,
    so a process that only calls :meth:`score_rows` with cached embeddings never loads it.
    The ONNX file is checked first (:func:`verify_published`): against ``expected_sha256`` when
    given, and against the registry manifest beside it; a mismatch raises
    :class:`ArtifactMismatchError` and nothing is loaded.
    """

    def __init__(self, onnx_path: str | Path, encoder: Any | None = None, providers: Sequence[str] | None = None, threads: int | None = None, expected_sha256: str | None = None):
        self.path = Path(onnx_path)
        side = sidecar_path(self.path)
        if not self.path.exists():
            raise FileNotFoundError(f"pctr: no ONNX model at {self.path}")
        if not side.exists():
            raise FileNotFoundError(f"pctr: no sidecar config at {side} (export with llm_auction.models.pctr.export_onnx)")
        # Before onnxruntime reads a byte: a truncated or altered file is refused by hash, not by
        # whatever a damaged graph happens to do (see verify_published).
        self.sha256 = verify_published(self.path, expected_sha256)
        self.config = json.loads(side.read_text(encoding="utf-8"))
        if self.config.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"{side}: not a pCTR sidecar (format={self.config.get('format')!r})")
        self.dim = int(self.config["text_dim"])
        for key in ("user_hash", "ad_hash"):
            if self.config[key].get("hash") != ID_HASH:
                raise ValueError(f"{side}: ids hashed with {self.config[key].get('hash')!r}, this version hashes with {ID_HASH!r}: retrain the model (llm-auction pctr train --cold)")
        self.user_hasher = IdHasher(self.config["user_hash"]["n_buckets"], self.config["user_hash"]["salt"])
        self.ad_hasher = IdHasher(self.config["ad_hash"]["n_buckets"], self.config["ad_hash"]["salt"])
        self.session = _session(self.path, providers, threads)
        self.providers = self.session.get_providers()
        self._encoder = encoder
        if encoder is not None and int(encoder.dim) != self.dim:
            raise ValueError(f"encoder dim {encoder.dim} != model text_dim {self.dim}")

    @property
    def encoder(self):
        if self._encoder is None:
            from .encoder import TextEncoder

            enc = self.config.get("encoder")
            path = enc if enc and Path(enc).exists() else None
            self._encoder = TextEncoder(path)
            if int(self._encoder.dim) != self.dim:
                raise ValueError(f"encoder dim {self._encoder.dim} != model text_dim {self.dim}")
        return self._encoder

    def score_rows(
        self,
        query_emb: np.ndarray,
        answer_emb: np.ndarray,
        user_ids: Sequence[str | None] | str | None,
        ad_ids: Sequence[str | None],
        batch_size: int = 65536,
    ) -> np.ndarray:
        """float32 [B] probabilities; a single embedding row or user id broadcasts over the ads."""
        n = len(ad_ids)
        q = np.asarray(query_emb, dtype=np.float32)
        a = np.asarray(answer_emb, dtype=np.float32)
        q = np.broadcast_to(q, (n, self.dim)) if q.ndim == 1 else q
        a = np.broadcast_to(a, (n, self.dim)) if a.ndim == 1 else a
        if q.shape != (n, self.dim) or a.shape != (n, self.dim):
            raise ValueError(f"embeddings must be [{n}, {self.dim}] (or one row), got {q.shape} and {a.shape}")
        users = [user_ids] * n if user_ids is None or isinstance(user_ids, str) else list(user_ids)
        if len(users) != n:
            raise ValueError(f"user_ids has {len(users)} entries for {n} ads")
        u = self.user_hasher(users)
        d = self.ad_hasher(list(ad_ids))
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        out = [
            _run(self.session, np.ascontiguousarray(q[i : i + batch_size]), np.ascontiguousarray(a[i : i + batch_size]), u[i : i + batch_size], d[i : i + batch_size])
            for i in range(0, n, batch_size)
        ]
        return np.concatenate(out).astype(np.float32, copy=False)

    def score(self, query: str, answer: str, user_id: str | None, ad_ids: Sequence[str]) -> dict[str, float]:
        """{ad_id: pCTR} for the ads of one answer (ids unseen in training score as 'unknown')."""
        ad_ids = list(ad_ids)
        if not ad_ids:
            return {}
        q, a = self.encoder.encode([query, answer])
        p = self.score_rows(q, a, user_id, ad_ids)
        return {ad: float(v) for ad, v in zip(ad_ids, p)}
