"""mSPRT: under repeated looks the type-I error stays below alpha; a clear effect is found."""

import numpy as np

from llm_auction.consumers.sequential import ArmStats, msprt


def stopped_with_reject(rng, effect, sd=30.0, tau=10.0, alpha=0.05, batch=25, looks=40):
    """Look after every batch of each arm (up to 1,000 queries per arm); True if ever rejected."""
    c, s = np.empty(0), np.empty(0)
    for _ in range(looks):
        c = np.concatenate([c, rng.normal(effect, sd, batch)])
        s = np.concatenate([s, rng.normal(0.0, sd, batch)])
        r = msprt(ArmStats(len(c), c.mean(), c.var(ddof=1)), ArmStats(len(s), s.mean(), s.var(ddof=1)), tau, alpha)
        if r.reject:
            return True, r
    return False, r


def test_type_one_error_under_forty_looks_stays_below_alpha():
    rng = np.random.default_rng(0)
    runs = 400
    rejected = sum(stopped_with_reject(rng, 0.0)[0] for _ in range(runs))
    # Ville: <= alpha = 0.05 whatever the number of looks (a fixed-n z-test peeked 40 times: ~0.25).
    assert rejected / runs <= 0.05 + 2 * (0.05 * 0.95 / runs) ** 0.5, rejected


def test_power_on_a_clear_effect_and_the_sign_of_the_decision():
    rng = np.random.default_rng(1)
    found = [stopped_with_reject(rng, 10.0) for _ in range(100)]
    assert sum(f for f, _ in found) >= 90
    assert all(r.diff > 0 and r.ci_low > 0 for f, r in found if f)
    worse, r = stopped_with_reject(rng, -15.0)
    assert worse and r.diff < 0 and r.ci_high < 0


def test_small_arms_never_reject():
    r = msprt(ArmStats(1, 100.0, 0.0), ArmStats(1, 0.0, 0.0), tau=10.0)
    assert not r.reject and r.p_value == 1.0
    assert ArmStats.of([1.0, 3.0]) == ArmStats(2, 2.0, 2.0)
