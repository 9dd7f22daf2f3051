"""The Kafka address a command runs against: ``LLMA_KAFKA_BOOTSTRAP``, checked before any work starts.

Shared by the commands that need a broker (``serve``, ``stream-app``, ``topics``), so each fails
the same way, with one line that says how to get a broker, instead of deep inside a client.
"""

from __future__ import annotations


def kafka_bootstrap(settings) -> str:
    """``settings.kafka_bootstrap`` once a broker answers there; :class:`~llm_auction.cli.CliError` when it is unset."""
    from llm_auction.cli import CliError
    from llm_auction.infra.kafka import check_broker

    if not settings.kafka_bootstrap:
        raise CliError("LLMA_KAFKA_BOOTSTRAP is not set; start a broker (`llm-auction broker`) and export its address, or run `llm-auction demo` for the all-in-one loop")
    check_broker(settings.kafka_bootstrap, settings)
    return settings.kafka_bootstrap
