"""The stream app's leader-timer tick (stream_app/timers.py): ready, one at a time, never fatal."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from llm_auction.stream_app.timers import register_leader_timer, tick


class Ctx:
    def __init__(self, ready: bool = True):
        self._ready = ready

    def ready(self) -> bool:
        return self._ready


@dataclass
class State:
    running: bool = False


def test_a_tick_runs_its_step_only_when_ready_and_not_already_running():
    calls = []

    async def step():
        calls.append(1)

    asyncio.run(tick(Ctx(ready=False), State(), step, "failed"))
    asyncio.run(tick(Ctx(), State(running=True), step, "failed"))
    assert calls == []
    state = State()
    asyncio.run(tick(Ctx(), state, step, "failed"))
    assert calls == [1] and not state.running


def test_a_second_tick_during_a_running_step_does_nothing():
    calls = []

    async def main():
        state, gate = State(), asyncio.Event()

        async def step():
            calls.append(1)
            await gate.wait()

        first = asyncio.create_task(tick(Ctx(), state, step, "failed"))
        await asyncio.sleep(0)
        assert state.running
        await tick(Ctx(), state, step, "failed")  # returns at once
        gate.set()
        await first
        assert not state.running

    asyncio.run(main())
    assert calls == [1]


def test_a_failing_step_is_logged_and_the_next_tick_runs_again(caplog):
    state = State()

    async def step():
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="llm_auction.stream_app"):
        asyncio.run(tick(Ctx(), state, step, "stream_app: retrain failed"))
    assert not state.running
    assert any("stream_app: retrain failed" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_register_attaches_a_leader_timer_named_for_faust():
    seen = {}

    class App:
        def timer(self, interval_s, *, name, on_leader):
            def attach(fn):
                seen.update(interval_s=interval_s, name=name, on_leader=on_leader, fn=fn)
                return fn

            return attach

    ran = []

    async def step():
        ran.append(1)

    register_leader_timer(App(), Ctx(), State(), step, name="pctr-retrain", interval_s=5.0, failure="failed")
    assert (seen["interval_s"], seen["name"], seen["on_leader"], seen["fn"].__name__) == (5.0, "pctr-retrain", True, "pctr_retrain")
    asyncio.run(seen["fn"]())
    assert ran == [1]
