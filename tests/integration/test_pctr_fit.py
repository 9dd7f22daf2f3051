"""pCTR fitting on real MiniLM embeddings, with clicks drawn from a KNOWN click function.

The truth (``llm_auction.trainer.pctr_synth``): p = sigmoid(10 * (cos(query, ad title) - c) +
ad bias + user bias - 2.2). The network sees the query, the answer, the user id and the ad id,
never the truth; these tests check it recovers enough of it to rank and calibrate clicks on
queries it never saw, that its ONNX export is the same function, and that warm starts start
where the previous model ended.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from llm_auction.models.pctr import PctrScorer, export_onnx
from llm_auction.trainer.metrics import auc
from llm_auction.trainer.pctr_fit import PctrConfig, PctrTrainer, holdout_mask, score_impressions
from llm_auction.trainer.pctr_synth import synthetic_impressions

pytestmark = pytest.mark.integration  # loads MiniLM


@pytest.fixture(scope="module")
def encoder(request, text_encoder):
    enc = text_encoder  # the session's MiniLM (tests/conftest.py): loaded once, its cache shared
    # Embeddings are keyed by the text's hash, so a cache kept between runs can never be stale.
    cache = request.config.cache.mkdir("llma-pctr") / "encoder-cache.npz" if getattr(request.config, "cache", None) else None
    if cache:
        enc.load_cache(cache)
    yield enc
    if cache:
        enc.save_cache(cache)


@pytest.fixture(scope="module")
def impressions(encoder) -> pd.DataFrame:
    return synthetic_impressions(encoder, n_queries=1000, answers_per_query=2, replays=4, seed=0)


def config(**kw) -> PctrConfig:
    return PctrConfig(**{"epochs": 8, "holdout_fraction": 0.2, "seed": 0, "progress": False, "threads": 1, **kw})


@pytest.fixture(scope="module")
def fitted(encoder, impressions):
    trainer = PctrTrainer(config(), encoder)
    data = trainer.prepare(impressions)
    return trainer, data, trainer.fit(data)


def test_learns_the_known_click_function(fitted, impressions):
    trainer, data, r = fitted
    m = r.metrics
    assert r.n_train + r.n_holdout == len(impressions) and r.n_holdout > 2000
    # ranks clicks on unseen queries far better than chance, and beats the constant predictor
    assert m["auc"] > 0.68, m
    assert m["log_loss"] < m["log_loss_const"] - 0.03, m
    # ... without exceeding what the true probabilities achieve on the same draws
    assert 0.75 < m["oracle_auc"] and m["auc"] < m["oracle_auc"] + 0.01, m
    # calibrated: mean prediction / observed CTR, and / mean true probability, near 1
    assert 0.85 < m["calibration"] < 1.15, m
    assert 0.85 < m["calibration_true"] < 1.15, m
    # it learned the query-ad relevance term, not only per-ad/user biases: within one ad
    # (bias fixed), predictions still rank the true probabilities
    hold = data.rows(data.holdout)
    p = trainer.predict(r.net, hold)
    per_ad = []
    for b in np.unique(hold.ad_idx):
        rows = hold.ad_idx == b
        if rows.sum() >= 30:
            per_ad.append(np.corrcoef(p[rows], hold.truth[rows])[0, 1])
    assert np.nanmean(per_ad) > 0.2, np.nanmean(per_ad)  # 0.26-0.39 over holdout splits (seeds 0-2); 0 is chance
    # training history is reported and the best epoch is kept
    assert r.history and r.best_epoch >= 1 and r.timings["fit_s"] > 0


def test_holdout_is_by_query_and_stable(impressions):
    mask = holdout_mask(impressions["query_id"], 0.2, seed=0)
    train_q = set(impressions.loc[~mask, "query_id"])
    hold_q = set(impressions.loc[mask, "query_id"])
    assert not train_q & hold_q
    assert 0.15 < len(hold_q) / (len(train_q) + len(hold_q)) < 0.25
    assert np.array_equal(mask, holdout_mask(impressions["query_id"].sample(frac=1, random_state=1).sort_index(), 0.2, seed=0))
    assert not np.array_equal(mask, holdout_mask(impressions["query_id"], 0.2, seed=1))


def test_onnx_export_and_scorer_match_the_trained_torch_model(fitted, impressions, encoder, tmp_path):
    trainer, data, r = fitted
    path = export_onnx(r.net, tmp_path / "model.onnx", encoder=str(encoder.path))
    hold = data.rows(data.holdout)
    q, a = data.q_emb[hold.q_idx[:1000]], data.a_emb[hold.a_idx[:1000]]
    u, d = hold.user_idx[:1000], hold.ad_idx[:1000]
    scorer = PctrScorer(path, encoder=encoder)
    for n in (1, 1000):
        with torch.no_grad():
            ref = r.net.eval()(*(torch.from_numpy(np.ascontiguousarray(x[:n])) for x in (q, a, u, d))).numpy()
        got = scorer.session.run(["pctr"], {"query_emb": q[:n], "answer_emb": a[:n], "user_idx": u[:n], "ad_idx": d[:n]})[0]
        assert got.shape == (n,) and np.max(np.abs(got - ref)) < 1e-5
    # scoring raw string ids hashes them exactly as training did
    rows = impressions.iloc[:500]
    by_scorer = scorer.score_rows(encoder.encode(rows["query"].tolist()), encoder.encode(rows["text"].tolist()), rows["user_id"].tolist(), rows["ad_id"].tolist())
    sub = data.rows(np.arange(len(data)) < 500)
    assert np.max(np.abs(by_scorer - trainer.predict(r.net, sub))) < 1e-5
    # the served model's metrics on the impressions equal the torch model's
    m = score_impressions(scorer, impressions[data.holdout], progress=False)
    assert m["auc"] == pytest.approx(r.metrics["auc"], abs=1e-4)


def test_warm_start_starts_from_the_previous_weights(encoder, impressions):
    first = impressions["query_id"].str[-1].astype(int) % 2 == 0  # two disjoint sets of queries
    trainer = PctrTrainer(config(epochs=3), encoder)
    prev = trainer.fit(impressions[first])
    warm = trainer.fit(impressions[~first], init_state=prev.net.state_dict())
    cold = trainer.fit(impressions[~first])
    # a fresh model starts at the base rate (its head's bias at logit(train CTR)): about the constant predictor's loss
    ctr = impressions[~first]["clicked"].mean()
    constant = -(ctr * np.log(ctr) + (1 - ctr) * np.log(1 - ctr))
    assert abs(cold.initial_train_loss - constant) < 0.03, (cold.initial_train_loss, constant)
    # before any step, the warm model already predicts the new data better than that
    assert warm.initial_train_loss < cold.initial_train_loss - 0.02, (warm.initial_train_loss, cold.initial_train_loss)
    assert warm.initial_train_loss < prev.history[0]["train_loss"]
    # ids routed by the first fit stay routed after the second
    assert torch.all(warm.net.user_route[prev.net.user_route > 0] > 0)
    with pytest.raises(ValueError, match="warm start"):
        PctrTrainer(config(user_buckets=999), encoder).fit(impressions[~first], init_state=prev.net.state_dict())


def test_prepare_drops_unlabeled_rows_and_tolerates_missing_ids(encoder, impressions):
    df = impressions.iloc[:50].astype({"clicked": object}).copy()
    df.loc[df.index[:5], "clicked"] = None
    df.loc[df.index[5:10], "user_id"] = None
    df.loc[df.index[10], "ad_id"] = ""
    data = PctrTrainer(config(), encoder).prepare(df)
    assert len(data) == 45
    assert (data.user_idx[:5] == 0).all() and data.ad_idx[5] == 0
    with pytest.raises(ValueError, match="missing columns"):
        PctrTrainer(config(), encoder).prepare(df.drop(columns=["text"]))
    with pytest.raises(ValueError):
        PctrConfig(holdout_fraction=1.0)
    assert auc(data.y, np.full(len(data), 0.3)) == 0.5
