"""mSPRT: under repeated looks the type-I error stays below alpha; a clear effect is found.
Per-user (cluster-robust) arm statistics and CUPED on hand-made cases."""

import math

import numpy as np
import pytest

from llm_auction.consumers.sequential import ArmStats, Unit, clustered, cuped, cuped_arms, cuped_theta, msprt


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


def test_clustered_variance_on_hand_made_users():
    # one query per user: exactly the iid sample variance
    ys = [1.0, 4.0, 2.0, 8.0, 5.0]
    assert clustered((1, y) for y in ys) == pytest.approx(ArmStats.of(ys))
    # two users, each 10 queries with identical outcomes (0 and 10): 20 "iid" queries would give
    # Var(mean) = s^2 / 20 = 26.3 / 20 ~ 1.3; two independent units give k/(k-1) sum((Y - m N)^2) / N^2 = 25
    a = clustered([(10, 0.0), (10, 100.0)])
    iid = ArmStats.of([0.0] * 10 + [10.0] * 10)
    assert a.n == 20 and a.mean == 5.0 == iid.mean
    assert a.var / a.n == pytest.approx(2 * (50.0 ** 2 + 50.0 ** 2) / 400) == pytest.approx(25.0)
    assert a.var / a.n > 10 * iid.var / iid.n
    # the mean weighs queries, not users; one user or none: no variance estimate
    assert clustered([(3, 30.0), (1, 0.0)]).mean == 7.5
    assert math.isinf(clustered([(50, 10.0)]).var) and clustered([]) == ArmStats(0, 0.0, 0.0)


def test_a_non_estimable_variance_is_no_evidence():
    r = msprt(ArmStats(100, 50.0, math.inf), ArmStats(100, 0.0, 1.0), tau=10.0)
    assert not r.reject and r.p_value == 1.0 and r.ci_low == -math.inf


def test_cluster_variance_keeps_the_test_valid_when_users_ask_many_queries():
    """A/A with a strong user effect: the per-user test stays near alpha, the iid one does not."""
    rng = np.random.default_rng(2)

    def arm():
        users = rng.normal(0, 30, 40)  # 40 users, 20 queries each, a per-user mean
        sums = [(20, float(np.sum(u + rng.normal(0, 5, 20)))) for u in users]
        flat = [y for _, tot in sums for y in [tot / 20] * 20]
        return clustered(sums), ArmStats.of(flat)

    runs, cl, iid = 300, 0, 0
    for _ in range(runs):
        (c, ci), (s_, si) = arm(), arm()
        cl += msprt(c, s_, tau=5.0).reject
        iid += msprt(ci, si, tau=5.0).reject
    assert cl / runs <= 0.05 + 2 * (0.05 * 0.95 / runs) ** 0.5 < iid / runs, (cl, iid)


def test_cuped_shrinks_the_variance_and_keeps_the_mean():
    rng = np.random.default_rng(4)
    x = rng.normal(10, 3, 2000)
    y = 2.0 * x + rng.normal(0, 1, 2000)
    theta = cuped_theta(list(y), list(x))
    assert theta == pytest.approx(2.0, abs=0.05)
    adj = cuped(list(y), list(x), theta)
    assert np.mean(adj) == pytest.approx(np.mean(y))  # centred on mean(x): the mean is unchanged
    assert np.var(adj) < 0.05 * np.var(y)  # 1 - rho^2 of the variance is left
    assert cuped_theta([1.0, 2.0], [3.0, 3.0]) == 0.0 and cuped([1.0, 2.0], [3.0, 3.0], 0.0) == [1.0, 2.0]
    with pytest.raises(ValueError):
        cuped([1.0], [1.0, 2.0], 1.0)


def test_cuped_arms_estimate_the_difference_without_bias_and_narrower():
    """Across simulations, the adjusted difference averages the true effect, with less spread."""
    rng = np.random.default_rng(6)

    def units(effect, n=300):
        out = []
        for _ in range(n):
            q = int(rng.integers(1, 4))  # 1 to 3 queries per user
            x = rng.normal(20, 8, q)  # known before routing: the arm does not change it
            y = x + rng.normal(0, 6, q) + effect
            out.append(Unit(q, float(y.sum()), float(x.sum())))
        return out

    plain, adj = [], []
    for _ in range(200):
        s_, c = units(0.0), units(2.0)
        sa, ca, theta = cuped_arms(s_, c)
        adj.append(ca.mean - sa.mean)
        plain.append(clustered((u.n, u.y) for u in c).mean - clustered((u.n, u.y) for u in s_).mean)
        assert 0.7 < theta < 1.3
    assert np.mean(adj) == pytest.approx(2.0, abs=0.1)  # 200 runs: the mean's own sd is about 0.02
    assert np.std(adj) < 0.7 * np.std(plain)
    # the reported variance matches the spread it should describe (same order, per-user estimate)
    assert (sa.var / sa.n + ca.var / ca.n) == pytest.approx(np.var(adj), rel=0.35)
    with pytest.raises(ValueError):
        cuped_arms([Unit(1, 1.0)], [Unit(1, 1.0, 1.0)])
