"""``llm-auction policy list|show|announce|rollout|promote|rollback``: published policy versions and people's rollout decisions.

``list`` / ``show`` read the registry; ``announce`` sends a version's event once
(``producers.versions``). The rollout commands reads ``auction.rollout`` from the beginning (the current routing is its latest
event) and ``auction.policy-versions`` (a version never announced is refused), builds the
decision (``consumers/rollout_controller.operator_event``) and sends it on ``auction.rollout``,
where responders apply it and the rollout controller records it in ClickHouse. Nothing here
opens the warehouse: with embedded ClickHouse the controller owns it.
"""

from __future__ import annotations

import argparse
import json


REGISTRY_DEFAULT = "LLMA_REGISTRY_DIR, else <LLMA_DATA_DIR>/registry"


def register(sub: argparse._SubParsersAction) -> None:
    from llm_auction.cli.args import add_out

    q = sub.add_parser("policy", help="list / show / announce published policy versions; rollout / promote / rollback",
                       description="Published Ad-LLM policy versions (the registry's policy kind) and rollout decisions.")
    pc = q.add_subparsers(dest="policy_command", metavar="ACTION")
    ls = pc.add_parser("list", help="versions, oldest first, as JSON lines")
    add_out(ls, "registry root", REGISTRY_DEFAULT)
    ls.set_defaults(handler=_list)
    sh = pc.add_parser("show", help="one version's manifest as JSON")
    sh.add_argument("version", help="like policy-0001")
    add_out(sh, "registry root", REGISTRY_DEFAULT)
    sh.set_defaults(handler=_show)
    an = pc.add_parser("announce", help="announce a version on auction.policy-versions (once; a repeat is a no-op)")
    an.add_argument("version", help="like policy-0001")
    an.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: LLMA_KAFKA_BOOTSTRAP)")
    add_out(an, "registry root", REGISTRY_DEFAULT)
    an.set_defaults(handler=_announce)
    register_rollout(pc)
    q.set_defaults(handler=lambda args: q.print_help() or 0)


def _registry(args):
    from llm_auction.cli.args import registry_root
    from llm_auction.trainer.registry import ModelRegistry

    return ModelRegistry(registry_root(args), "policy")


def _list(args) -> int:
    for m in _registry(args).list():
        print(json.dumps({"version": m.version, "parent": m.parent, "created": m.created.isoformat(), "pctr_version": m.extra.get("pctr_version"),
                          "pairs": m.metrics.get("pairs"), "mean_reward": m.metrics.get("mean_reward"), "sha256": m.sha256, "path": str(m.path)}))
    return 0


def _show(args) -> int:
    m = _registry(args).get(args.version)
    print(json.dumps({**m.model_dump(mode="json"), "path": str(m.path)}, indent=2))
    return 0


def _announce(args) -> int:
    from llm_auction.cli import CliError
    from llm_auction.producers.versions import announcer
    from llm_auction.schemas.settings import get_settings

    registry = _registry(args)
    send = announcer(registry, get_settings(), args.bootstrap)
    if send is None:
        raise CliError("no Kafka bootstrap (pass --bootstrap or set LLMA_KAFKA_BOOTSTRAP)")
    print(json.dumps({"version": args.version, "announced_now": send(registry.get(args.version))}))
    return 0


def register_rollout(pc: argparse._SubParsersAction) -> None:
    """Add the rollout commands to the ``policy`` group."""
    r = pc.add_parser("rollout", help="canary a version (or a mechanism arm: mosaic:20, slot) to a share of users (stable hash of the user id)")
    r.add_argument("version", help="like policy-0001")
    r.add_argument("--share", type=float, required=True, help="share of users in [0, 1] (raising it keeps the users already in)")
    p = pc.add_parser("promote", help="make a version the stable one (every user)")
    p.add_argument("version", help="like policy-0001")
    b = pc.add_parser("rollback", help="end a version's canary, or return from it to the previous stable version")
    b.add_argument("version", help="like policy-0001")
    for cmd, action in ((r, "rollout"), (p, "promote"), (b, "rollback")):
        cmd.add_argument("--reason", default="", help="recorded with the decision")
        cmd.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: LLMA_KAFKA_BOOTSTRAP)")
        cmd.set_defaults(handler=_decide, rollout_action=action)


def _decide(args) -> int:
    from llm_auction.cli import CliError
    from llm_auction.consumers.rollout_controller import operator_event
    from llm_auction.infra.kafka import ensure_topics, make_producer, open_reader, read_topics
    from llm_auction.mechanisms import arm_versions, is_mechanism
    from llm_auction.schemas import PolicyVersion, RolloutEvent, encode
    from llm_auction.schemas.settings import get_settings
    from llm_auction.schemas.topics import POLICY_VERSIONS, ROLLOUT

    s = get_settings()
    bootstrap = args.bootstrap or s.kafka_bootstrap
    if not bootstrap:
        raise CliError("no Kafka bootstrap (pass --bootstrap or set LLMA_KAFKA_BOOTSTRAP)")
    ensure_topics(s, bootstrap)
    consumer = open_reader(s, bootstrap, [ROLLOUT, POLICY_VERSIONS])
    try:
        events = read_topics(consumer, {ROLLOUT: RolloutEvent, POLICY_VERSIONS: PolicyVersion})
    finally:
        consumer.close()
    history = [e for e in events if isinstance(e, RolloutEvent)]
    known = {s.policy_version} | {e.version for e in events if isinstance(e, PolicyVersion)} | {e.stable_version for e in history}
    if is_mechanism(args.version) and arm_versions(args.version, s.policy_version) <= known:
        known.add(args.version)  # a mechanism arm (mosaic:20, policy:<v>) over announced versions (docs/mechanisms.md)
    try:
        event = operator_event(history, s.policy_version, args.rollout_action, args.version, getattr(args, "share", None), args.reason, known=known)
    except ValueError as e:
        raise CliError(str(e)) from None
    producer = make_producer(s, bootstrap)
    try:
        producer.send(ROLLOUT, key=args.version.encode("utf-8"), value=encode(event)).get(timeout=30)
    finally:
        producer.close()
    print(json.dumps(event.model_dump(mode="json", include={"event_id", "stable_version", "candidate_version", "candidate_share", "state", "reason"})))
    return 0
