"""The rollout controller's error rates, measured by simulation (issue 24, docs/rollout.md).

Simulated canaries run through the controller's own rule (``RolloutRule`` from the settings,
``arm_of_users``, ``decide``): users are routed by share as the router does (a user stays in one
arm), each query earns Eq. 8's realized reward from the project's own distribution, heavy tail
included: bids uniform 1..100, 0-2 ads per answer, a click per ad with a per-user click
propensity, -10 n_ads^2, and -500 on a format error. The controller looks every ``--look``
queries until it decides or the budget ends the canary ``inconclusive``.

Scenarios: A/A at shares 0.5 and 0.1 (both arms the same: every promotion or rollback is an
error), a candidate 20% better in expected revenue (its click probabilities x 1.2), and one whose
format-error rate is 5 points lower (the kind of gain IRPO's penalty trains for). Rates come with
Wilson 95% intervals. One command; prints a table and writes bench/results/rollout.json.

    .venv/bin/python bench/rollout.py [--sims 200] [--look 250]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_results  # noqa: E402


@dataclass(frozen=True)
class Traffic:
    """One arm's answers: the shape of the demo's base policy on SmolLM2 (docs/loop.md)."""

    ads_p: tuple[float, float, float] = (0.62, 0.34, 0.04)  # P(0, 1, 2 ads)
    ctr: float = 0.08  # mean click probability of an exposed ad
    format_error: float = 0.14
    click_lift: float = 1.0  # the candidate's multiplier of every click probability


def simulate(rng: np.random.Generator, n: int, users: np.ndarray, propensity: np.ndarray, t: Traffic) -> np.ndarray:
    """Realized Eq. 8 reward of ``n`` answers to ``users`` (indices into ``propensity``)."""
    n_ads = rng.choice(3, size=n, p=t.ads_p)
    bids = rng.integers(1, 101, size=(n, 2))
    p = np.clip(t.ctr * t.click_lift * propensity[users], 0, 1)[:, None]
    clicks = (rng.random((n, 2)) < p) & (np.arange(2)[None, :] < n_ads[:, None])
    fe = rng.random(n) < t.format_error
    return (bids * clicks).sum(axis=1) - 10.0 * n_ads**2 - 500.0 * fe, fe


class ArmSums:
    """Per-user running sums of one arm: what ``warehouse.arm_users`` returns, kept incrementally."""

    def __init__(self, n_users: int):
        self.q, self.s, self.s2, self.e = (np.zeros(n_users) for _ in range(4))

    def add(self, users: np.ndarray, reward: np.ndarray, fe: np.ndarray) -> None:
        n = len(self.q)
        self.q += np.bincount(users, minlength=n)
        self.s += np.bincount(users, weights=reward, minlength=n)
        self.s2 += np.bincount(users, weights=reward**2, minlength=n)
        self.e += np.bincount(users, weights=fe.astype(float), minlength=n)

    def rows(self) -> list[dict]:
        return [{"queries": int(self.q[i]), "reward_sum": self.s[i], "reward_sq_sum": self.s2[i], "revenue_sum": 0.0, "format_errors": self.e[i]}
                for i in np.flatnonzero(self.q)]


def canary(seed: int, share: float, stable: Traffic, candidate: Traffic, rule, look: int, n_users: int) -> tuple[str, int]:
    """One simulated canary: (final state, total queries at the end). The controller looks after
    every ``look`` candidate-arm queries (its clock does not matter: the test is valid at any look)."""
    from llm_auction.consumers.rollout_controller import arm_of_users, decide

    rng = np.random.default_rng(seed)
    weights = rng.pareto(2.0, n_users) + 1.0  # a few heavy users, as real traffic has
    weights /= weights.sum()
    propensity = rng.lognormal(-0.125, 0.5, n_users)  # per-user click propensity, mean 1
    in_candidate = rng.random(n_users) < share
    sums = {False: ArmSums(n_users), True: ArmSums(n_users)}
    total, per_look = 0, max(1, round(look / share))
    while True:
        users = rng.choice(n_users, size=per_look, p=weights)
        cand = in_candidate[users]
        for side, traffic in ((False, stable), (True, candidate)):
            mask = cand == side
            sums[side].add(users[mask], *simulate(rng, int(mask.sum()), users[mask], propensity, traffic))
        total += per_look
        state, _, _ = decide(rule, arm_of_users(sums[False].rows()), arm_of_users(sums[True].rows()))
        if state is not None:
            return state, total


def wilson(k: int, n: int) -> list[float]:
    ci = stats.binomtest(k, n).proportion_ci(method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def main() -> int:
    from llm_auction.consumers.rollout_controller import RolloutRule

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sims", type=int, default=200, help="canaries per scenario (default 200)")
    ap.add_argument("--look", type=int, default=250, help="candidate-arm queries between two looks of the controller (default 250)")
    ap.add_argument("--users", type=int, default=1000, help="users in the population (default 1000)")
    args = ap.parse_args()
    rule = RolloutRule()
    base = Traffic()
    scenarios = {
        "aa_share_0.5": (0.5, base), "aa_share_0.1": (0.1, base),
        "revenue_plus_20pct_share_0.5": (0.5, replace(base, click_lift=1.2)),
        "format_errors_minus_5pts_share_0.5": (0.5, replace(base, format_error=base.format_error - 0.05)),
        "format_errors_minus_5pts_share_0.1": (0.1, replace(base, format_error=base.format_error - 0.05)),
    }
    t0 = time.perf_counter()
    results = {}
    for name, (share, cand) in scenarios.items():
        outcomes = [canary(1000 + i, share, base, cand, rule, args.look, args.users) for i in range(args.sims)]
        states = [s for s, _ in outcomes]
        decided = [n for s, n in outcomes if s != "inconclusive"]
        k = {s: states.count(s) for s in ("promoted", "rolled_back", "inconclusive")}
        results[name] = {
            "share": share, "sims": args.sims, **{f"{s}_rate": round(v / args.sims, 4) for s, v in k.items()},
            **{f"{s}_ci95": wilson(v, args.sims) for s, v in k.items()},
            "median_queries_to_decision": float(np.median(decided)) if decided else None,
            "median_queries_to_end": float(np.median([n for _, n in outcomes])),
        }
        print(f"{name}: {k} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    aa = [results["aa_share_0.5"], results["aa_share_0.1"]]
    summary = {
        "false_promotion_rate": max(r["promoted_rate"] for r in aa), "false_rollback_rate": max(r["rolled_back_rate"] for r in aa),
        "power": results["revenue_plus_20pct_share_0.5"]["promoted_rate"],
        "power_format_errors_minus_5pts": results["format_errors_minus_5pts_share_0.5"]["promoted_rate"],
        "median_queries_to_decision": results["format_errors_minus_5pts_share_0.5"]["median_queries_to_decision"],
    }
    rows = [(f"{n}: promoted / rolled back / inconclusive", f"{r['promoted_rate']:.3f} {r['promoted_ci95']} / {r['rolled_back_rate']:.3f} / "
             f"{r['inconclusive_rate']:.3f}; median queries {r['median_queries_to_end']:.0f}", "A/A: promoted <= 0.05" if n.startswith("aa") else "")
            for n, r in results.items()]
    print(table(rows))
    write_results("rollout", {**summary, "scenarios": results, "settings": {**rule.__dict__, "look": args.look, "users": args.users, "traffic": base.__dict__},
                              "seconds": round(time.perf_counter() - t0, 1), "machine": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
