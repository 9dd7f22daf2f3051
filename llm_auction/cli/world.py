"""``llm-auction world``: generate the synthetic world (ads, profiles, queries with bids)."""

from __future__ import annotations

import argparse
import json

from llm_auction.cli.args import add_out, add_seed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "world",
        help="generate the synthetic world: 100 ads, 3,000 profiles, 15,000 queries with bids",
        description=(
            "Write ads.jsonl, profiles.jsonl, queries.jsonl (with a train/test split and uniform "
            "integer bids 1..100 per ad per query) and manifest.json. Deterministic for a seed."
        ),
    )
    add_out(p, "output folder", "<LLMA_DATA_DIR>/world")
    add_seed(p)
    p.add_argument("--users", type=int, default=3000, help="number of user profiles (default 3000)")
    p.add_argument("--queries-per-user", type=int, default=5, help="queries per profile (default 5)")
    p.add_argument("--test", type=int, default=None, help="queries held out for test (default: 20%% of all)")
    p.add_argument("--validation", type=int, default=None, help="train queries set aside as the validation split, for choosing presets (default: a third of --test)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_world)


def _world(args) -> int:
    from llm_auction.cli import CliError
    from llm_auction.producers.world import WorldSpec, generate_world
    from llm_auction.schemas.settings import get_settings

    s = get_settings()
    if args.users < 1 or args.queries_per_user < 1:
        raise CliError("--users and --queries-per-user must be at least 1")
    n = args.users * args.queries_per_user
    n_test = n // 5 if args.test is None else args.test
    if not 0 <= n_test <= n:
        raise CliError(f"--test must be between 0 and {n}")
    n_val = n_test // 3 if args.validation is None else args.validation
    if not 0 <= n_val <= n - n_test:
        raise CliError(f"--validation must be between 0 and {n - n_test}")
    spec = WorldSpec(seed=s.seed if args.seed is None else args.seed, n_users=args.users, queries_per_user=args.queries_per_user, n_test=n_test, n_validation=n_val)
    out = args.out or s.data_dir / "world"
    manifest = generate_world(out, spec, progress=not args.quiet)
    print(json.dumps({"out": str(out), **{k: v for k, v in manifest.items() if k != "sha256"}}))
    return 0
