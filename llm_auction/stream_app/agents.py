"""The impressions join: two agents (responses, clicks) and two timers (join expiry, buffer flush).

Each step is a named coroutine over the app's :class:`~llm_auction.stream_app.context.StreamContext`;
:func:`register` attaches them to the Faust app under the names Faust knows them by
(agents ``responses`` and ``clicks``, timers ``join-expiry`` and ``impressions-flush``).
"""

from __future__ import annotations

import time

from llm_auction.schemas import ClickEvent, ResponseEvent
from llm_auction.stream_app.context import StreamContext


async def consume_responses(ctx: StreamContext, stream) -> None:
    """Agent ``responses``: each decoded response joins its waiting clicks (or waits for them)."""
    async for event in stream.events():
        resp = await ctx.decoded(event, ResponseEvent, ctx.topics.responses)
        if resp is not None:
            ctx.stats.responses += 1
            await ctx.emit(ctx.joiner.add_response(resp, time.time()))


async def consume_clicks(ctx: StreamContext, stream) -> None:
    """Agent ``clicks``: each decoded click joins its response (or waits as an early click)."""
    async for event in stream.events():
        click = await ctx.decoded(event, ClickEvent, ctx.topics.clicks)
        if click is not None:
            ctx.stats.clicks += 1
            await ctx.emit(ctx.joiner.add_click(click, time.time()))


async def expire_join(ctx: StreamContext) -> None:
    """Timer ``join-expiry``: responses whose clicks are overdue leave the join."""
    if ctx.ready():
        await ctx.emit(ctx.joiner.expire(time.time()))


async def flush_impressions(ctx: StreamContext) -> None:
    """Timer ``impressions-flush``: the buffer table into ClickHouse."""
    if not ctx.ready():
        return
    ctx.started()
    await ctx.flush()


def expiry_interval_s(max_wait_s: float) -> float:
    return max(0.2, min(1.0, max_wait_s / 4))


def register(app, ctx: StreamContext) -> None:
    """Attach the join's agents and timers to ``app``."""
    s = ctx.settings

    @app.agent(ctx.responses_topic, name="responses")
    async def responses(stream):
        await consume_responses(ctx, stream)

    @app.agent(ctx.clicks_topic, name="clicks")
    async def clicks(stream):
        await consume_clicks(ctx, stream)

    @app.timer(expiry_interval_s(s.stream_join_max_wait_s), name="join-expiry")
    async def join_expiry():
        await expire_join(ctx)

    @app.timer(s.stream_flush_interval_s, name="impressions-flush")
    async def impressions_flush():
        await flush_impressions(ctx)
