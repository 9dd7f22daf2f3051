"""``serve responder``'s served pCTR for mechanism arms: none without a promoted pCTR version
(a rollout to mosaic or slot is then refused), else one opened on first use."""

from llm_auction.cli.serve import served_pctr
from llm_auction.schemas.settings import Settings
from llm_auction.trainer.registry import ModelRegistry


def test_no_promoted_pctr_gives_no_score_and_a_promoted_one_is_opened_lazily(tmp_path, monkeypatch):
    s = Settings(data_dir=tmp_path)
    assert served_pctr(s) is None
    src = tmp_path / "onnx"
    src.mkdir()
    (src / "model.onnx").write_bytes(b"not opened until first used")
    ModelRegistry(s.resolved_registry_dir(), "pctr").publish(src)
    opened = []
    import llm_auction.trainer.reward as reward

    monkeypatch.setattr(reward, "open_reward", lambda mode, **kw: opened.append(mode) or reward.Reward(lambda items: [{"x": 0.5}] * len(items), "pctr-0001"))
    score = served_pctr(s, encoder=object())
    assert callable(score) and opened == []  # nothing loaded at start
    assert score([("q", "a", ["x"])]) == [{"x": 0.5}] and score([]) == [] and opened == ["pctr"]  # opened once
