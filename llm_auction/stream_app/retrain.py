"""The pCTR retraining timer (``pctr-retrain``, on the leader only: one retrainer per app).

Every ``LLMA_PCTR_RETRAIN_INTERVAL_S`` :func:`maybe_retrain` counts the persisted impressions;
when at least ``LLMA_PCTR_MIN_NEW_IMPRESSIONS`` arrived since the watermark (kept in
``stream_pctr_versions``), it reads the latest ``LLMA_PCTR_TRAIN_WINDOW`` impressions, runs
:class:`Retrainer` (``retrain_and_publish``) on its own thread so the agents keep consuming,
announces the version on ``auction.pctr-versions`` unless its event id was already announced, and
records the announcement. A failed retrain is logged and never stops the join.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from llm_auction.logs import log_event
from llm_auction.schemas import encode
from llm_auction.schemas.settings import Settings
from llm_auction.stream_app.context import StreamContext
from llm_auction.stream_app.store import StreamStore
from llm_auction.stream_app.timers import register_leader_timer

log = logging.getLogger("llm_auction.stream_app")


class Retrainer:
    """The synchronous half of retraining (runs in an executor thread)."""

    def __init__(self, settings: Settings, store: StreamStore, registry, pctr_config=None, encoder=None, encoder_cache: Path | None = None):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.pctr_config = pctr_config
        self._encoder = encoder
        self.encoder_cache = encoder_cache

    @property
    def encoder(self):
        if self._encoder is None:
            from llm_auction.models.encoder import TextEncoder

            self._encoder = TextEncoder()
            if self.encoder_cache is not None:
                self._encoder.load_cache(self.encoder_cache)
        return self._encoder

    def train(self, df, impressions_total: int):
        from llm_auction.trainer.pctr_fit import PctrConfig
        from llm_auction.trainer.pctr_publish import retrain_and_publish

        s = self.settings
        config = self.pctr_config or PctrConfig(seed=s.seed, progress=False)
        return retrain_and_publish(
            df, self.registry, self.encoder, config, min_auc=s.pctr_min_auc, promote_margin=s.pctr_promote_margin, min_holdout_clicks=s.pctr_min_holdout_clicks,
            extra={"source": "stream_app", "app_id": self.store.app_id, "impressions_total": int(impressions_total)},
            encoder_cache=self.encoder_cache,
        )


@dataclass
class RetrainState:
    """The timer's own state: the watermark (impressions trained on; read from the store once) and
    whether a retrain is under way (a tick during one does nothing)."""

    retrainer: Retrainer
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="pctr-retrain"))
    watermark: int | None = None
    running: bool = False


async def maybe_retrain(ctx: StreamContext, state: RetrainState) -> None:
    s, stats, store = ctx.settings, ctx.stats, ctx.store
    total = await ctx.io(store.count_impressions)
    if state.watermark is None:
        state.watermark = await ctx.io(store.watermark)
    new = total - state.watermark
    log_event(
        log, "stream_app: status", impressions=total, watermark=state.watermark, new=new, responses=stats.responses, clicks=stats.clicks,
        joined=stats.joined, persisted=stats.persisted, pending=len(ctx.pending), early_clicks=len(ctx.early), bad=stats.bad,
    )
    if new < s.pctr_min_new_impressions:
        return
    df = await ctx.io(store.window, s.pctr_train_window)
    loop = asyncio.get_running_loop()
    manifest = await loop.run_in_executor(state.pool, state.retrainer.train, df, total)
    stats.retrains += 1
    state.watermark = total
    event = manifest.to_event()
    if await ctx.io(store.announced, event.event_id):
        stats.skipped_announcements.append(manifest.version)
        log_event(log, "stream_app: version already announced", version=manifest.version, event_id=event.event_id)
        return
    fut = await ctx.versions_topic.send(key=manifest.version, value=encode(event))
    await fut  # acknowledged by the broker before it is recorded as announced
    await ctx.io(store.record_announcement, event.event_id, manifest.version, manifest.sha256, manifest.promoted, total, len(df))
    stats.announced.append(manifest.version)
    m = manifest.metrics
    log_event(
        log, "stream_app: pctr version announced", version=manifest.version, promoted=manifest.promoted, auc=m.get("auc"),
        oracle_auc=m.get("oracle_auc"), calibration_ratio=m.get("calibration_ratio"), rows=len(df), impressions_total=total,
    )


def register(app, ctx: StreamContext, retrainer: Retrainer) -> RetrainState:
    """Attach the retraining timer ``pctr-retrain`` to ``app`` (one :func:`maybe_retrain` at a time,
    on the leader: one retrainer per app, not per worker); returns its state."""
    state = RetrainState(retrainer)
    register_leader_timer(
        app, ctx, state, lambda: maybe_retrain(ctx, state), name="pctr-retrain", interval_s=ctx.settings.pctr_retrain_interval_s, failure="stream_app: retrain failed",
    )
    return state
