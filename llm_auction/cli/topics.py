"""``llm-auction topics``: create the pipeline's topics on the configured broker, or list them."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topics", help="create or list the pipeline's Kafka topics (LLMA_KAFKA_BOOTSTRAP)")
    ts = p.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    c = ts.add_parser("create", help="create every auction.* topic that is missing (idempotent)")
    c.set_defaults(handler=_create)
    ls = ts.add_parser("list", help="print each auction.* topic with its partition count")
    ls.set_defaults(handler=_list)


def _bootstrap():
    from llm_auction.cli.bootstrap import kafka_bootstrap
    from llm_auction.schemas.settings import get_settings

    s = get_settings()
    return s, kafka_bootstrap(s)


def _create(args) -> int:
    from llm_auction.infra.kafka import ensure_topics

    s, bootstrap = _bootstrap()
    print(json.dumps({"bootstrap": bootstrap, "created": ensure_topics(s, bootstrap)}))
    return 0


def _list(args) -> int:
    from llm_auction.infra.kafka import topic_partitions
    from llm_auction.schemas.topics import TOPICS

    s, bootstrap = _bootstrap()
    print(json.dumps(topic_partitions(s, bootstrap, TOPICS), indent=2))
    return 0
