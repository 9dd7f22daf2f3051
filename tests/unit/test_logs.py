"""Logging set-up: structured lines, and third-party noise kept down."""

import logging

from llm_auction.logs import setup_logging


def test_kafka_io_thread_slow_step_warnings_are_quiet_unless_debugging():
    try:
        setup_logging("INFO")
        selector = logging.getLogger("kafka.net.selector")
        assert not selector.isEnabledFor(logging.WARNING) and selector.isEnabledFor(logging.ERROR)
        assert logging.getLogger("kafka.producer").isEnabledFor(logging.WARNING)  # the rest of kafka still warns
        setup_logging("DEBUG")
        assert selector.isEnabledFor(logging.DEBUG)
    finally:
        setup_logging("WARNING")
