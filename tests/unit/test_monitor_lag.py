"""The monitor's consumer-lag section (issue 15, item 7): how lag rows and the reasons for no lag
read; the lag itself is measured on a real broker in tests/faults/test_back_pressure.py."""

from __future__ import annotations

from llm_auction.cli.monitor import render_snapshot

EMPTY = {"totals": {}, "policies": [], "per_minute": [], "rollout": {}}


def test_lag_rows_are_a_table_with_the_group_topic_and_offsets():
    snap = EMPTY | {"lag": [
        {"group": "llma-responder", "topic": "auction.queries", "committed": 120, "end": 420, "lag": 300},
        {"group": "llma-sink", "topic": "auction.clicks", "committed": 7, "end": 7, "lag": 0},
    ]}
    text = render_snapshot(snap)
    head, rule, first, second = text.split("consumer lag (records written, not yet committed by the group)\n")[1].splitlines()[:4]
    assert head.split() == ["group", "topic", "committed", "end", "lag"]
    assert first.split() == ["llma-responder", "auction.queries", "120", "420", "300"]
    assert second.split() == ["llma-sink", "auction.clicks", "7", "7", "0"]


def test_no_broker_says_why_in_one_line_and_no_lag_key_prints_nothing():
    text = render_snapshot(EMPTY | {"lag": None, "lag_error": "LLMA_KAFKA_BOOTSTRAP is not set"})
    assert text.splitlines()[-1] == "consumer lag: LLMA_KAFKA_BOOTSTRAP is not set"
    assert "consumer lag" not in render_snapshot(dict(EMPTY))
