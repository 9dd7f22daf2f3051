"""Command-line overrides are validated at once: a refused value is one line and exit code 2,
before anything connects (no broker is needed to see it)."""

import pytest

from llm_auction.cli import main
from llm_auction.schemas.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch):
    monkeypatch.delenv("LLMA_KAFKA_BOOTSTRAP", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "argv, field",
    [
        (["serve", "responder", "--batch-size", "0"], "adllm_batch_size"),
        (["serve", "responder", "--candidates", "-1"], "candidates_k"),
        (["serve", "sink", "--batch-size", "0"], "sink_batch_size"),
        (["serve", "sink", "--max-wait", "0"], "sink_batch_max_wait_s"),
    ],
)
def test_a_bad_serve_override_fails_at_once_in_one_line(argv, field, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("llm-auction: error: invalid setting: ")
    assert f"{field} (LLMA_{field.upper()})" in err  # not "LLMA_KAFKA_BOOTSTRAP is not set": checked first


@pytest.mark.parametrize(
    "argv, says",
    [
        (["stream-app", "--holdout", "1.5"], "holdout_fraction must be in [0, 1), got 1.5"),
        (["stream-app", "--epochs", "0"], "epochs must be at least 1"),
        (["stream-app", "--patience", "-1"], "--patience must be 0 (never stop early) or more, got -1"),
    ],
)
def test_a_bad_stream_app_override_fails_at_once_in_one_line(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says in err


def test_with_overrides_validates_and_keeps_the_rest():
    from llm_auction.schemas.settings import SettingsError

    base = Settings(seed=11, kafka_sasl_password="s3cret")
    s = base.with_overrides(adllm_batch_size=3)
    assert (s.adllm_batch_size, s.seed, s.kafka_sasl_password.get_secret_value(), base.adllm_batch_size) == (3, 11, "s3cret", 8)
    with pytest.raises(SettingsError) as e:
        base.with_overrides(adllm_batch_size=0, candidates_k=-1)
    assert str(e.value) == (
        "invalid setting: adllm_batch_size (LLMA_ADLLM_BATCH_SIZE) = 0: Input should be greater than or equal to 1; "
        "candidates_k (LLMA_CANDIDATES_K) = -1: Input should be greater than or equal to 1"
    )
