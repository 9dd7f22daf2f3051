"""The stream app's leader timers: one tick at a time, only once the tables are ready, never fatal.

The pCTR retrain timer and the IRPO trigger share these rules. A tick does nothing while a table
is recovering or the app rebalances (their state is not yet the changelog's), or while the
previous tick's step still runs (a retrain takes longer than the interval; two at once would train
the same window twice). A step that raises is logged and dropped: the join must keep running, and
the next tick retries.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from llm_auction.logs import log_event
from llm_auction.stream_app.context import StreamContext

log = logging.getLogger("llm_auction.stream_app")


class TimerState(Protocol):
    """A timer's state: ``running`` is true while its step runs."""

    running: bool


async def tick(ctx: StreamContext, state: TimerState, step: Callable[[], Awaitable[object]], failure: str) -> None:
    """Run ``step()`` unless the tables are not ready or ``state.running``; log ``failure`` (ERROR) if it raises."""
    if not ctx.ready() or state.running:
        return
    state.running = True
    try:
        await step()
    except Exception as e:  # noqa: BLE001 - a failed step must not stop the join; the next tick retries
        log_event(log, failure, logging.ERROR, error=f"{type(e).__name__}: {e}"[:500])
    finally:
        state.running = False


def register_leader_timer(app, ctx: StreamContext, state: TimerState, step: Callable[[], Awaitable[object]], *, name: str, interval_s: float, failure: str) -> None:
    """Attach Faust timer ``name`` to ``app``: every ``interval_s``, one :func:`tick` of ``step``,
    on the leader only (one per app, not per worker)."""


    async def leader_tick():
        await tick(ctx, state, step, failure)

    leader_tick.__name__ = leader_tick.__qualname__ = name.replace("-", "_")  # what Faust's logs call the timer
    app.timer(interval_s, name=name, on_leader=True)(leader_tick)
