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
queries (hence the controller's minimum per arm); ``tau`` should be of the order of the effects
worth detecting, in the metric's units (too small or too large loses power, never validity).
The rollout controller stops at the first look where ``p <= alpha``, so the running minimum
equals the current value: no state is needed across looks or restarts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ArmStats:
    """Sufficient statistics of one arm: count, mean and sample variance of the metric."""

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
    if candidate.n < 2 or stable.n < 2:
        return MsprtResult(diff, math.inf, 0.0, 1.0, -math.inf, math.inf, False)
    v = candidate.var / candidate.n + stable.var / stable.n
    v = max(v, 1e-12)  # two constant arms: any difference is certain, none is not
    t2 = tau * tau
    log_lr = 0.5 * math.log(v / (v + t2)) + t2 * diff * diff / (2.0 * v * (v + t2))
    p = 1.0 if log_lr <= 0 else math.exp(-log_lr)
    half = math.sqrt(v * (v + t2) / t2 * (math.log((v + t2) / v) + 2.0 * math.log(1.0 / alpha)))
    return MsprtResult(diff, v, log_lr, p, diff - half, diff + half, p <= alpha)


__all__ = ["ArmStats", "MsprtResult", "msprt"]
