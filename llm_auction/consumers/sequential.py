"""A two-arm sequential test that may be looked at after every batch: mSPRT with a normal mixture.

Pure arithmetic (no I/O), used by the rollout controller on reward per query.

Model. Arm means ``mu_c`` (candidate) and ``mu_s`` (stable), difference ``Delta = mu_c - mu_s``;
H0: ``Delta = 0``. At a look with ``n_c``, ``n_s`` queries, sample means ``xbar_c``, ``xbar_s``
and sample variances ``s_c^2``, ``s_s^2``::

    Dhat = xbar_c - xbar_s,          V = s_c^2 / n_c + s_s^2 / n_s      (Dhat ~ N(Delta, V))

With a mixture ``Delta ~ N(0, tau^2)`` over the alternative, the likelihood ratio of the mixture
against H0 has the closed form (Johari, Koomen, Pekelis, Walsh 2017, "Peeking at A/B tests")::

    Lambda = sqrt(V / (V + tau^2)) * exp( tau^2 * Dhat^2 / (2 * V * (V + tau^2)) )

``Lambda`` is a nonnegative martingale under H0 with mean 1, so by Ville's inequality
``P(Lambda >= 1/alpha at ANY look) <= alpha``: the always-valid p-value
``p = min(1, 1 / Lambda)`` (running minimum over looks) may be read after every batch. The
matching (1 - alpha) confidence sequence for ``Delta``::

    Dhat +- sqrt( V * (V + tau^2) / tau^2 * (log((V + tau^2) / V) + 2 * log(1 / alpha)) )

Caveats, stated: V is estimated (plug-in), which is accurate once each arm has a few hundred
queries from many users (hence the controller's minimum per arm); ``tau`` should be of the order of the effects
worth detecting, in the metric's units (too small or too large loses power, never validity).
The rollout controller stops at the first look where ``p <= alpha``, so the running minimum
equals the current value: no state is needed across looks or restarts.

The unit. The router randomizes users, not queries, and one user's queries move together (the
same interests, the same ads). :func:`clustered` therefore builds an arm's statistics from
per-user sums: the mean is the ratio ``sum(Y_i) / sum(N_i)`` (every query weighs the same) and
its variance the delta-method (cluster-robust) one over users ``i``::

    Var(m) = k / (k - 1) * sum_i (Y_i - m N_i)^2 / (sum_i N_i)^2        (k users)

returned as ``ArmStats(n=sum N_i, mean=m, var=n * Var(m))`` so that ``V = var_c/n_c + var_s/n_s``
above is unchanged. One query per user gives back the iid sample variance exactly.

Variance reduction (CUPED, Deng, Xu, Kohavi, Walker 2013). With a covariate ``x`` per query that
the arm does not change (known before the router assigns the user), ``y - theta (x - mu)`` has
the mean of ``y`` shifted by the same ``theta (E[x] - mu)`` in both arms, so the difference is
unbiased, and the variance is ``Var(y) (1 - rho^2)`` at ``theta = cov(x, y) / var(x)``.
:func:`cuped_arms` estimates ``theta`` on the stable arm, centres on the pooled mean ``mu`` and
works on per-user sums like :func:`clustered`. A covariate the arm changes (e.g. the predicted
revenue of the ads an answer shows) would subtract part of the effect being measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ArmStats:
    """Sufficient statistics of one arm: count, mean and variance of the metric per query, such
    that ``var / n`` is the variance of ``mean`` (the sample variance for iid queries; ``n`` times
    the cluster-robust variance of the mean from :func:`clustered`; ``inf``: not estimable)."""

    n: int
    mean: float
    var: float

    @classmethod
    def of(cls, xs) -> "ArmStats":
        xs = list(xs)
        n = len(xs)
        mean = sum(xs) / n if n else 0.0
        var = sum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
        return cls(n, mean, var)


@dataclass(frozen=True)
class MsprtResult:
    diff: float  # Dhat, candidate minus stable
    variance: float  # V
    log_lr: float  # log Lambda
    p_value: float  # min(1, 1 / Lambda)
    ci_low: float
    ci_high: float
    reject: bool  # p <= alpha: the arms differ, in the direction of diff

    def as_dict(self) -> dict[str, float]:
        return {"diff": self.diff, "variance": self.variance, "log_lr": self.log_lr, "p_value": self.p_value,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "reject": float(self.reject)}


def msprt(candidate: ArmStats, stable: ArmStats, tau: float, alpha: float = 0.05) -> MsprtResult:
    """One look of the normal-mixture mSPRT (formulas in the module docstring)."""
    if tau <= 0 or not 0 < alpha < 1:
        raise ValueError(f"need tau > 0 and 0 < alpha < 1, got tau={tau}, alpha={alpha}")
    diff = candidate.mean - stable.mean
    v = candidate.var / candidate.n + stable.var / stable.n if candidate.n >= 2 and stable.n >= 2 else math.inf
    if not math.isfinite(v):  # too few queries, or users: no evidence either way
        return MsprtResult(diff, math.inf, 0.0, 1.0, -math.inf, math.inf, False)
    v = max(v, 1e-12)  # two constant arms: any difference is certain, none is not
    t2 = tau * tau
    log_lr = 0.5 * math.log(v / (v + t2)) + t2 * diff * diff / (2.0 * v * (v + t2))
    p = 1.0 if log_lr <= 0 else math.exp(-log_lr)
    half = math.sqrt(v * (v + t2) / t2 * (math.log((v + t2) / v) + 2.0 * math.log(1.0 / alpha)))
    return MsprtResult(diff, v, log_lr, p, diff - half, diff + half, p <= alpha)


@dataclass(frozen=True)
class Unit:
    """One randomization unit (a user) of an arm: its queries ``n``, the sum ``y`` of the metric
    over them and, when a covariate is measured, the sum ``x`` of the covariate (None: none)."""

    n: int
    y: float
    x: float | None = None


def clustered(units: Iterable[tuple[int, float]]) -> ArmStats:
    """An arm's :class:`ArmStats` from per-user ``(queries, metric sum)``, with the cluster-robust
    variance of the per-query mean (module docstring, "The unit").

    Why: queries of one user are not independent, and treating them as such understates the
    variance, so the test would reject too often. Fewer than two users: ``var`` is ``inf`` (the
    between-user spread is not estimable, and :func:`msprt` then finds no evidence)."""
    units = [(int(n), float(y)) for n, y in units if n > 0]
    total = sum(n for n, _ in units)
    if not units:
        return ArmStats(0, 0.0, 0.0)
    mean = sum(y for _, y in units) / total
    k = len(units)
    if k < 2:
        return ArmStats(total, mean, math.inf)
    var_mean = k / (k - 1) * sum((y - mean * n) ** 2 for n, y in units) / (total * total)
    return ArmStats(total, mean, var_mean * total)


def cuped_theta(y: Sequence[float], x: Sequence[float]) -> float:
    """The variance-minimizing coefficient ``cov(x, y) / var(x)``; 0 for a constant ``x`` (it
    explains nothing) or fewer than two points."""
    n = len(y)
    if n != len(x):
        raise ValueError(f"y and x differ in length: {n} and {len(x)}")
    if n < 2:
        return 0.0
    my, mx = sum(y) / n, sum(x) / n
    vx = sum((a - mx) ** 2 for a in x)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / vx if vx > 0 else 0.0


def cuped(y: Sequence[float], x: Sequence[float], theta: float, center: float | None = None) -> list[float]:
    """``y_i - theta (x_i - center)`` (CUPED's adjusted metric); ``center`` defaults to mean(x).

    Its mean is ``mean(y) - theta (mean(x) - center)``: with the default centre exactly
    ``mean(y)``; comparing two arms, pass both the same centre (module docstring)."""
    if len(y) != len(x):
        raise ValueError(f"y and x differ in length: {len(y)} and {len(x)}")
    c = sum(x) / len(x) if center is None and x else (center or 0.0)
    return [b - theta * (a - c) for b, a in zip(y, x)]


def _linearized(units: Sequence[Unit]) -> tuple[list[float], list[float]]:
    """Per-user residuals ``Y_i - m_y N_i`` and ``X_i - m_x N_i`` (the delta method's linearization
    of the two ratio means): the per-query deviations when every user asks one query."""
    total = sum(u.n for u in units)
    my, mx = sum(u.y for u in units) / total, sum(u.x for u in units) / total
    return [u.y - my * u.n for u in units], [u.x - mx * u.n for u in units]


def cuped_arms(stable: Sequence[Unit], candidate: Sequence[Unit]) -> tuple[ArmStats, ArmStats, float]:
    """Both arms' CUPED-adjusted :class:`ArmStats` (cluster-robust) and ``theta``.

    ``theta`` is estimated on the stable arm's linearized per-user values (the candidate's would
    let the effect leak into the coefficient); each user's sum becomes
    ``Y_i - theta (X_i - mu N_i)`` with ``mu`` the pooled per-query mean of the covariate, the
    same for both arms, so the difference of the adjusted means is
    ``diff(y) - theta diff(x)``, unbiased when the arm does not change ``x``.
    Raises ``ValueError`` when a unit lacks its covariate."""
    units = [*stable, *candidate]
    if any(u.x is None for u in units):
        raise ValueError("cuped_arms: every unit needs its covariate sum x")
    stable = [u for u in stable if u.n > 0]
    candidate = [u for u in candidate if u.n > 0]
    theta = cuped_theta(*_linearized(stable)) if len(stable) > 1 else 0.0
    total = sum(u.n for u in units)
    mu = sum(u.x for u in units) / total if total else 0.0

    def adjusted(arm: Sequence[Unit]) -> ArmStats:
        ys = cuped([u.y for u in arm], [u.x - mu * u.n for u in arm], theta, center=0.0)
        return clustered((u.n, y) for u, y in zip(arm, ys))

    return adjusted(stable), adjusted(candidate), theta


__all__ = ["ArmStats", "MsprtResult", "Unit", "clustered", "cuped", "cuped_arms", "cuped_theta", "msprt"]
