"""The pCTR network, its ONNX export and the onnxruntime scorer (no text encoder needed here:
embeddings are random unit vectors; learning on real MiniLM embeddings is in test_pctr_fit.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm_auction.auction import allocate, reward
from llm_auction.models.pctr import (
    AD_SALT,
    ID_HASH,
    USER_SALT,
    IdHasher,
    CHECKPOINT,
    OnnxMismatchError,
    PctrNet,
    PctrScorer,
    export_onnx,
    load_checkpoint,
    random_batch,
    save_checkpoint,
    sidecar_path,
)
from llm_auction.schemas.ids import stable_hash

from stub_encoder import HashEncoder

DIM = 32  # small text dim keeps these tests instant; the network does not care


def small_net(seed: int = 0) -> PctrNet:
    torch.manual_seed(seed)
    net = PctrNet(text_dim=DIM, user_buckets=512, ad_buckets=128)
    hu, ha = IdHasher(512, USER_SALT), IdHasher(128, AD_SALT)
    net.mark_seen(hu([f"u{i}" for i in range(50)]), ha([f"Ad-{i:04d}" for i in range(20)]))
    # move the trained-looking rows away from init so that routing differences are visible
    with torch.no_grad():
        net.user_emb.weight.add_(torch.randn_like(net.user_emb.weight))
        net.ad_emb.weight.add_(torch.randn_like(net.ad_emb.weight))
    return net


def test_hasher_is_stable_in_range_and_maps_empty_to_unknown():
    h = IdHasher(1000, "user:")
    ids = ["u00001", "u00002", "", None, "  ", float("nan")]
    b = h(ids)
    assert b.dtype == np.int64
    assert b[2:].tolist() == [0, 0, 0, 0]
    assert 1 <= b[0] < 1000 and 1 <= b[1] < 1000 and b[0] != b[1]
    # the shared stable hash, fixed across processes (unlike hash())
    assert b[0] == 1 + stable_hash("user:", "u00001") % 999
    # the salt changes the assignment (users and ads do not share collision patterns)
    many = [f"x{i}" for i in range(200)]
    assert np.mean(IdHasher(1000, "ad:")(many) == h(many)) < 0.05
    with pytest.raises(ValueError):
        IdHasher(1)


def test_net_shapes_probabilities_and_unknown_routing():
    net = small_net().eval()
    q, a, u, d = (torch.from_numpy(x) for x in random_batch(64, DIM, 512, 128, seed=3))
    p = net(q, a, u, d)
    assert p.shape == (64,)
    assert torch.all((p > 0) & (p < 1))
    # an unseen bucket scores exactly like the unknown row 0; a seen one differs
    seen = int(IdHasher(512, USER_SALT)(["u7"])[0])
    unseen = next(b for b in range(1, 512) if int(net.user_route[b]) == 0)
    one = lambda b: net(q[:1], a[:1], torch.tensor([b]), d[:1])  # noqa: E731
    assert torch.equal(one(unseen), one(0))
    assert not torch.allclose(one(seen), one(0))


def test_onnx_matches_torch_at_batch_1_and_1000(tmp_path):
    net = small_net()
    path = export_onnx(net, tmp_path / "m.onnx", DIM, encoder="stub")
    side = json.loads(sidecar_path(path).read_text())
    assert side["text_dim"] == DIM and side["user_hash"] == {"n_buckets": 512, "salt": USER_SALT, "hash": ID_HASH}
    assert side["verify_max_abs_diff"] < 1e-5
    scorer = PctrScorer(path)
    held_out = random_batch(1000, DIM, 512, 128, seed=99)  # not the export's own verify batch
    for n in (1, 1000):
        q, a, u, d = (x[:n] for x in held_out)
        with torch.no_grad():
            ref = net.eval()(*(torch.from_numpy(x) for x in (q, a, u, d))).numpy()
        got = scorer.session.run(["pctr"], {"query_emb": q, "answer_emb": a, "user_idx": u, "ad_idx": d})[0]
        assert got.shape == (n,)
        assert np.max(np.abs(got - ref)) < 1e-5


def test_export_refuses_a_graph_that_disagrees_with_torch(tmp_path):
    class BatchDependent(PctrNet):
        # tracing freezes this Python branch at the example's batch size: a classic export bug
        def forward(self, q, a, u, d):
            p = super().forward(q, a, u, d)
            return p if q.shape[0] <= 2 else 1 - p

    torch.manual_seed(0)
    net = BatchDependent(text_dim=DIM, user_buckets=64, ad_buckets=16)
    with pytest.warns(torch.jit.TracerWarning):  # torch warns that the traced branch may not generalize
        with pytest.raises(OnnxMismatchError):
            export_onnx(net, tmp_path / "bad.onnx", DIM)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_scorer_unknown_ids_never_raise_and_feed_the_reward(tmp_path):
    net = small_net()
    scorer = PctrScorer(export_onnx(net, tmp_path / "m.onnx", DIM), encoder=HashEncoder(DIM))
    q = HashEncoder(DIM).encode(["q"])[0]
    # ids whose buckets were never trained on (a hash collision with a trained id would share its row)
    new_user = next(f"new-user-{i}" for i in range(100) if int(net.user_route[scorer.user_hasher.bucket(f"new-user-{i}")]) == 0)
    new_ad = next(f"Ad-{9000 + i}" for i in range(100) if int(net.ad_route[scorer.ad_hasher.bucket(f"Ad-{9000 + i}")]) == 0)
    p = scorer.score_rows(q, q, [None, "", new_user, "u3"], [new_ad, None, "", "Ad-0001"])
    assert p.shape == (4,) and np.all((p > 0) & (p < 1))
    # None, "" and ids never trained on all score as the unknown row; trained ids do not
    unknown = scorer.score_rows(q, q, [None], [None])[0]
    assert scorer.score_rows(q, q, [new_user], [new_ad])[0] == pytest.approx(unknown, abs=1e-7)
    assert scorer.score_rows(q, q, ["u3"], ["Ad-0001"])[0] != pytest.approx(unknown, abs=1e-4)
    assert scorer.score_rows(q, q, [], []).shape == (0,)

    answer = "Try [@Hario V60 Ceramic Pour-Over Dripper@\\[Ad-2944\\]](#) for pour-over coffee."
    ctr = scorer.score("how do I brew coffee?", answer, "u3", ["Ad-2944", "Ad-4820"])
    assert set(ctr) == {"Ad-2944", "Ad-4820"} and all(0 < v < 1 for v in ctr.values())
    alloc = allocate(answer, {"Ad-2944": "Hario V60 Ceramic Pour-Over Dripper", "Ad-4820": "Dutch-imported Oriental Floral Coffee Cup"})
    assert alloc.exposed == ("Ad-2944",)
    assert reward(alloc, {"Ad-2944": 40, "Ad-4820": 90}, ctr) == pytest.approx(40 * ctr["Ad-2944"] - 10)


def test_scorer_rejects_bad_shapes_and_missing_sidecar(tmp_path):
    path = export_onnx(small_net(), tmp_path / "m.onnx", DIM)
    scorer = PctrScorer(path)
    with pytest.raises(ValueError):
        scorer.score_rows(np.zeros((3, DIM), np.float32), np.zeros((2, DIM), np.float32), "u", ["a", "b", "c"])
    # a model whose ids were hashed otherwise (crc32 before the shared hash) would score the wrong rows
    side = json.loads(sidecar_path(path).read_text())
    side["user_hash"]["hash"] = "crc32"
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(ValueError, match="retrain"):
        PctrScorer(path)
    sidecar_path(path).unlink()
    with pytest.raises(FileNotFoundError):
        PctrScorer(path)


def test_checkpoint_roundtrip_keeps_weights_and_routes(tmp_path):
    net = small_net()
    back = load_checkpoint(save_checkpoint(net, tmp_path / CHECKPOINT))
    assert back.hparams == net.hparams
    for k, v in net.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
