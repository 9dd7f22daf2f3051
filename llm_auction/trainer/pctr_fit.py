"""Fitting the pCTR reward model (Eq. 3) on impressions: one row per exposed ad, clicked or not.

BCE over exposed ads only (an ad that was not shown has no click label), Adam 1e-3, batch 256
(paper B.2.2). The text encoder is frozen, so every unique query and answer text is encoded
once, through the encoder's content-hash cache, and training only gathers rows of two small
embedding matrices: retraining on 100k impressions takes seconds once the texts are cached.

The holdout is chosen by a stable hash of ``query_id`` (and the seed), not by a random draw:
one query's ads never straddle train and holdout, and a query held out in one retrain stays
held out in the next, so a warm-started model is never evaluated on rows it trained on.

Usage (TRL-like: a config dataclass and a trainer)::

    trainer = PctrTrainer(PctrConfig(epochs=8), encoder=TextEncoder())
    result = trainer.fit(impressions_df, init_state=previous_net.state_dict())
    result.metrics["auc"], result.metrics["calibration"]
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from llm_auction.logs import log_event
from llm_auction.models.pctr import AD_SALT, USER_SALT, IdHasher, PctrNet
from llm_auction.schemas.ids import stable_hash
from llm_auction.trainer.metrics import auc, calibration_ratio, click_metrics, log_loss

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("query_id", "user_id", "query", "text", "ad_id", "clicked")


class NoTrainingRows(ValueError):
    """Too few impressions to fit on (none, or every one fell in the holdout). Not bad input: a
    policy that exposed no ads yet leaves nothing to learn from, so callers that run on a schedule
    keep the current pCTR version and try again with more traffic."""


@dataclass
class PctrConfig:
    """Hyperparameters of one pCTR fit (defaults: the paper's, plus early stopping)."""

    lr: float = 1e-3
    batch_size: int = 256
    epochs: int = 8
    holdout_fraction: float = 0.1
    seed: int = 0
    user_buckets: int = 16384  # hash buckets for user ids (3,000 users: ~10% share a bucket)
    ad_buckets: int = 1024  # hash buckets for ad ids (100 ads)
    user_dim: int = 64
    ad_dim: int = 32
    hidden: tuple[int, ...] = (128, 64, 32)
    early_stop_patience: int = 2  # epochs without holdout log-loss improvement; 0: never stop early
    early_stop_min_delta: float = 1e-4
    id_dropout: float = 0.05  # share of rows trained with the unknown id row (teaches bucket 0)
    weight_decay: float = 0.0
    # torch intra-op threads for the fit; None: torch's default (all cores). One by default: an MLP
    # at batch 256 gains little from more, and beside other services on a small machine extra
    # threads oversubscribe the cores (docs/benchmarks.md#figures-behind-defaults-and-code-choices; bench/pctr.py).
    threads: int | None = 1
    eval_batch_size: int = 16384
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be at least 1")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
        self.hidden = tuple(int(h) for h in self.hidden)

    def net_kwargs(self, text_dim: int) -> dict[str, Any]:
        return {"text_dim": text_dim, "user_buckets": self.user_buckets, "ad_buckets": self.ad_buckets, "user_dim": self.user_dim, "ad_dim": self.ad_dim, "hidden": self.hidden}


@dataclass
class PctrData:
    """Impressions as index arrays into two matrices of unique text embeddings."""

    q_emb: np.ndarray  # [n_unique_queries, D]
    a_emb: np.ndarray  # [n_unique_answers, D]
    q_idx: np.ndarray  # [N] int64
    a_idx: np.ndarray  # [N] int64
    user_idx: np.ndarray  # [N] int64 bucket
    ad_idx: np.ndarray  # [N] int64 bucket
    y: np.ndarray  # [N] float32 click
    holdout: np.ndarray  # [N] bool
    truth: np.ndarray | None = None  # [N] true click probability, when the data has it
    window: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def rows(self, mask: np.ndarray) -> "PctrData":
        return PctrData(self.q_emb, self.a_emb, self.q_idx[mask], self.a_idx[mask], self.user_idx[mask], self.ad_idx[mask], self.y[mask], self.holdout[mask], None if self.truth is None else self.truth[mask], self.window)


@dataclass
class PctrFitResult:
    net: PctrNet
    metrics: dict[str, float]  # on the holdout (empty when holdout_fraction is 0)
    train_metrics: dict[str, float]
    n_train: int
    n_holdout: int
    epochs_run: int
    best_epoch: int
    initial_train_loss: float  # train log loss before the first step: lower when warm-started
    initial_holdout_loss: float
    history: list[dict[str, float]]
    timings: dict[str, float]
    data_window: dict[str, Any]
    config: dict[str, Any]


def holdout_mask(query_ids: pd.Series | np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Stable per-query split: ``stable_hash(seed, query_id)`` mapped to [0, 1) < fraction."""
    if fraction <= 0:
        return np.zeros(len(query_ids), dtype=bool)
    codes, uniques = pd.factorize(pd.Series(query_ids).astype(str), sort=False)
    u = np.fromiter(
        (stable_hash(str(seed), q) / 2**64 for q in uniques),
        dtype=np.float64,
        count=len(uniques),
    )
    return (u < fraction)[codes]


def data_window(df: pd.DataFrame) -> dict[str, Any]:
    """What a model was trained on: row count and, when there is a ``ts`` column, its range."""
    w: dict[str, Any] = {"rows": int(len(df))}
    if "ts" in df.columns and len(df):
        ts = pd.to_datetime(df["ts"], utc=True)
        w["start"] = ts.min().isoformat()
        w["end"] = ts.max().isoformat()
    return w


class PctrTrainer:
    """Fits, evaluates and warm-starts :class:`~llm_auction.models.pctr.PctrNet`.

    ``encoder`` is anything with ``dim`` and ``encode(texts) -> float32 [n, dim]`` (a
    :class:`~llm_auction.models.encoder.TextEncoder`); its cache is what makes retraining cheap.
    """

    def __init__(self, config: PctrConfig | None = None, encoder: Any = None):
        self.config = config or PctrConfig()
        self.encoder = encoder
        self.user_hasher = IdHasher(self.config.user_buckets, USER_SALT)
        self.ad_hasher = IdHasher(self.config.ad_buckets, AD_SALT)

    # ------------------------------------------------------------------ data
    def _encode_unique(self, texts: pd.Series, what: str) -> tuple[np.ndarray, np.ndarray]:
        codes, uniques = pd.factorize(texts.astype(str), sort=False)
        chunk = 2048
        parts = []
        for i in tqdm(range(0, len(uniques), chunk), desc=f"pctr: encode {what}", unit="chunk", disable=not self.config.progress or len(uniques) <= chunk, leave=False):
            parts.append(self.encoder.encode(list(uniques[i : i + chunk])))
        emb = np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, self.encoder.dim), np.float32)
        return codes.astype(np.int64), emb

    def _hash(self, ids: pd.Series, hasher: IdHasher) -> np.ndarray:
        codes, uniques = pd.factorize(ids, sort=False, use_na_sentinel=True)
        buckets = np.append(hasher(list(uniques)), 0)  # code -1 (NaN/None) -> the unknown bucket
        return buckets[codes]

    def prepare(self, df: pd.DataFrame) -> PctrData:
        """Validate, encode unique texts, hash ids and split; rows without a click label are dropped."""
        if self.encoder is None:
            raise ValueError("PctrTrainer needs an encoder to prepare texts")
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"impressions: missing columns {missing} (need {list(REQUIRED_COLUMNS)})")
        df = df[df["clicked"].notna()]
        t0 = time.perf_counter()
        q_idx, q_emb = self._encode_unique(df["query"], "queries")
        a_idx, a_emb = self._encode_unique(df["text"], "answers")
        data = PctrData(
            q_emb=q_emb,
            a_emb=a_emb,
            q_idx=q_idx,
            a_idx=a_idx,
            user_idx=self._hash(df["user_id"], self.user_hasher),
            ad_idx=self._hash(df["ad_id"], self.ad_hasher),
            y=df["clicked"].astype(bool).to_numpy(np.float32),
            holdout=holdout_mask(df["query_id"].to_numpy(), self.config.holdout_fraction, self.config.seed),
            truth=df["click_probability"].to_numpy(np.float64) if "click_probability" in df.columns and df["click_probability"].notna().all() else None,
            window=data_window(df),
        )
        log_event(log, "pctr: data prepared", rows=len(data), unique_queries=len(q_emb), unique_answers=len(a_emb), holdout_rows=int(data.holdout.sum()), ctr=float(data.y.mean()) if len(data) else None, seconds=round(time.perf_counter() - t0, 3))
        return data

    # ------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, net: PctrNet, data: PctrData) -> np.ndarray:
        net.eval()
        Q, A = torch.from_numpy(data.q_emb), torch.from_numpy(data.a_emb)
        out = []
        bs = self.config.eval_batch_size
        for i in range(0, len(data), bs):
            sl = slice(i, i + bs)
            out.append(
                net(Q[torch.from_numpy(data.q_idx[sl])], A[torch.from_numpy(data.a_idx[sl])], torch.from_numpy(data.user_idx[sl]), torch.from_numpy(data.ad_idx[sl])).numpy()
            )
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def evaluate(self, net: PctrNet, data: PctrData) -> dict[str, float]:
        """AUC, log loss (and the constant predictor's), calibration = mean predicted / observed
        CTR; with true probabilities also ``oracle_auc`` and ``calibration_true``."""
        p = self.predict(net, data)
        return metrics_with_truth(data.y, p, data.truth)

    # --------------------------------------------------------------- fitting
    def build_net(self, text_dim: int, init_state: Mapping[str, torch.Tensor] | PctrNet | None = None) -> PctrNet:
        net = PctrNet(**self.config.net_kwargs(text_dim))
        if init_state is not None:
            state = init_state.state_dict() if isinstance(init_state, PctrNet) else init_state
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(f"warm start: previous weights do not fit this config ({str(e).splitlines()[0]})") from None
        return net

    def fit(self, impressions: pd.DataFrame | PctrData, init_state: Mapping[str, torch.Tensor] | PctrNet | None = None) -> PctrFitResult:
        """Train on the non-holdout rows (warm-started from ``init_state`` if given), early-stop
        on holdout log loss, and return the best epoch's network with its metrics."""
        threads_before = torch.get_num_threads()
        if self.config.threads:
            # Process-wide in torch: set for this fit only. One thread is often faster on a
            # shared 2-core machine (no oversubscription) for an MLP at batch 256.
            torch.set_num_threads(self.config.threads)
        try:
            return self._fit(impressions, init_state)
        finally:
            torch.set_num_threads(threads_before)

    def _fit(self, impressions: pd.DataFrame | PctrData, init_state: Mapping[str, torch.Tensor] | PctrNet | None) -> PctrFitResult:
        cfg = self.config
        t_start = time.perf_counter()
        data = impressions if isinstance(impressions, PctrData) else self.prepare(impressions)
        t_prep = time.perf_counter() - t_start
        train, hold = data.rows(~data.holdout), data.rows(data.holdout)
        if len(train) == 0:
            raise NoTrainingRows(f"pctr: no training rows ({len(data)} impressions, all in the holdout)" if len(data) else "pctr: no training rows (no impressions)")
        torch.manual_seed(cfg.seed)
        net = self.build_net(data.q_emb.shape[1], init_state)
        net.mark_seen(train.user_idx, train.ad_idx)
        if init_state is None:
            # Start at the base rate: the head's bias at logit(train CTR). From 0 (p = 0.5) a fit on a
            # few hundred rows (a handful of Adam steps) ends still predicting far above the CTR, and
            # IRPO's reward (bid x pCTR) then overpays every ad inserted (docs/benchmarks.md#figures-behind-defaults-and-code-choices).
            ctr = float(np.clip(train.y.mean(), 1e-3, 1 - 1e-3))
            with torch.no_grad():
                net.head.bias.fill_(math.log(ctr / (1 - ctr)))
        params = list(net.parameters())
        try:
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

        init_train_loss = log_loss(train.y, self.predict(net, train))
        init_hold_loss = log_loss(hold.y, self.predict(net, hold)) if len(hold) else float("nan")
        log_event(log, "pctr: fit start", rows_train=len(train), rows_holdout=len(hold), warm_start=init_state is not None, initial_train_loss=round(init_train_loss, 5), initial_holdout_loss=round(init_hold_loss, 5))

        Q, A = torch.from_numpy(data.q_emb), torch.from_numpy(data.a_emb)
        tq, ta = torch.from_numpy(train.q_idx), torch.from_numpy(train.a_idx)
        tu, td = torch.from_numpy(train.user_idx), torch.from_numpy(train.ad_idx)
        ty = torch.from_numpy(train.y)
        gen = torch.Generator().manual_seed(cfg.seed)
        bce = torch.nn.functional.binary_cross_entropy_with_logits

        history: list[dict[str, float]] = []
        best = (float("inf"), copy.deepcopy(net.state_dict()), 0)
        bad_epochs = 0
        t_fit = time.perf_counter()
        bar = tqdm(range(1, cfg.epochs + 1), desc="pctr: fit", unit="epoch", disable=not cfg.progress)
        for epoch in bar:
            net.train()
            perm = torch.randperm(len(train), generator=gen)
            total, seen = 0.0, 0
            for i in range(0, len(train), cfg.batch_size):
                b = perm[i : i + cfg.batch_size]
                u, d = tu[b], td[b]
                if cfg.id_dropout > 0:
                    u = u.masked_fill(torch.rand(len(b), generator=gen) < cfg.id_dropout, 0)
                    d = d.masked_fill(torch.rand(len(b), generator=gen) < cfg.id_dropout, 0)
                loss = bce(net.logits(Q[tq[b]], A[ta[b]], u, d), ty[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().item() * len(b)
                seen += len(b)
            row = {"epoch": epoch, "train_loss": total / seen}
            if len(hold):
                p = self.predict(net, hold)
                row.update(holdout_loss=log_loss(hold.y, p), holdout_auc=auc(hold.y, p), holdout_calibration=calibration_ratio(p, hold.y))
            history.append(row)
            bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
            log_event(log, "pctr: epoch", **{k: round(v, 5) for k, v in row.items()})
            score = row.get("holdout_loss", row["train_loss"])
            if score < best[0] - cfg.early_stop_min_delta:
                best = (score, copy.deepcopy(net.state_dict()), epoch)
                bad_epochs = 0
            else:
                bad_epochs += 1
                if cfg.early_stop_patience and len(hold) and bad_epochs >= cfg.early_stop_patience:
                    log_event(log, "pctr: early stop", epoch=epoch, best_epoch=best[2])
                    break
        bar.close()
        t_fit = time.perf_counter() - t_fit
        if len(hold):
            net.load_state_dict(best[1])  # the best epoch on the holdout, not the last
        net.eval()

        t_eval = time.perf_counter()
        metrics = self.evaluate(net, hold) if len(hold) else {}
        train_metrics = self.evaluate(net, train)
        t_eval = time.perf_counter() - t_eval
        timings = {"prepare_s": t_prep, "fit_s": t_fit, "eval_s": t_eval, "total_s": time.perf_counter() - t_start}
        log_event(log, "pctr: fit done", epochs_run=len(history), best_epoch=best[2] if len(hold) else len(history), **{k: round(v, 5) for k, v in metrics.items()}, **{k: round(v, 3) for k, v in timings.items()})
        return PctrFitResult(
            net=net,
            metrics=metrics,
            train_metrics=train_metrics,
            n_train=len(train),
            n_holdout=len(hold),
            epochs_run=len(history),
            best_epoch=best[2] if len(hold) else len(history),
            initial_train_loss=init_train_loss,
            initial_holdout_loss=init_hold_loss,
            history=history,
            timings=timings,
            data_window=data.window,
            config=asdict(cfg),
        )


def metrics_with_truth(y: np.ndarray, p: np.ndarray, truth: np.ndarray | None = None) -> dict[str, float]:
    """:func:`click_metrics`, plus ``oracle_auc`` (AUC of the true probabilities on the same
    draws: the ceiling) and ``calibration_true`` (mean predicted / mean true probability)."""
    m = click_metrics(y, p)
    if truth is not None and len(truth):
        m["oracle_auc"] = auc(y, truth)
        m["log_loss_oracle"] = log_loss(y, truth)
        m["calibration_true"] = calibration_ratio(p, truth)
    return m


def score_impressions(scorer, df: pd.DataFrame, progress: bool = True, chunk: int = 50_000) -> dict[str, float]:
    """Score impressions with a served model (:class:`~llm_auction.models.pctr.PctrScorer`,
    onnxruntime) and return :func:`metrics_with_truth` over all labeled rows."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"impressions: missing columns {missing} (need {list(REQUIRED_COLUMNS)})")
    df = df[df["clicked"].notna()]
    q_codes, q_uni = pd.factorize(df["query"].astype(str), sort=False)
    a_codes, a_uni = pd.factorize(df["text"].astype(str), sort=False)
    Q = scorer.encoder.encode(list(q_uni)) if len(q_uni) else np.zeros((0, scorer.dim), np.float32)
    A = scorer.encoder.encode(list(a_uni)) if len(a_uni) else np.zeros((0, scorer.dim), np.float32)
    users = df["user_id"].tolist()
    ads = df["ad_id"].tolist()
    out = []
    for i in tqdm(range(0, len(df), chunk), desc="pctr: score", unit="chunk", disable=not progress or len(df) <= chunk, leave=False):
        sl = slice(i, i + chunk)
        out.append(scorer.score_rows(Q[q_codes[sl]], A[a_codes[sl]], users[sl], ads[sl]))
    p = np.concatenate(out) if out else np.zeros(0, np.float32)
    truth = df["click_probability"].to_numpy(np.float64) if "click_probability" in df.columns and df["click_probability"].notna().all() else None
    return metrics_with_truth(df["clicked"].astype(bool).to_numpy(np.float32), p, truth)
