"""The controller's decision rule (consumers/rollout_controller.decide) on hand-made arms:
the minimum, the format-error guardrail as a sequential test, the reward mSPRT, the maximum and
its extension ending inconclusive (never a point-estimate decision), arms built per user, the
attribution cut-off of the warehouse query, and CUPED when the arms carry a covariate."""

from __future__ import annotations

import pytest

from llm_auction.consumers.rollout_controller import Arm, RolloutRule, arm_of_users, decide
from llm_auction.consumers.sequential import ArmStats
from llm_auction.schemas.events import ArmEvidence

RULE = RolloutRule(canary_share=0.5, min_queries=20, max_queries=1000, alpha=0.05, tau=20.0, max_format_error_increase=0.05)


def arm(n: int, reward: float, sd: float, errors: int) -> Arm:
    return Arm(ArmEvidence(queries=n, reward_per_query=reward, format_error_rate=errors / n), ArmStats(n, reward, sd * sd))


def test_waits_below_the_minimum():
    state, reason, _ = decide(RULE, arm(19, 0.0, 30, 0), arm(50, 100.0, 30, 0))
    assert state is None and reason.startswith("waiting")


def test_a_few_more_format_errors_in_a_small_canary_is_no_rollback():
    # the loop's first SmolLM2 canary: 4 errors in 26 against 3 in 38 was rolled back by the raw rule
    state, reason, test = decide(RULE, arm(38, -39.8, 120, 3), arm(26, -45.0, 130, 4))
    assert state is None, reason
    assert test["format_error_p_value"] > RULE.alpha


@pytest.mark.parametrize("n,errors_c,errors_s,rolled_back", [(200, 40, 10, True), (400, 40, 20, False), (60, 30, 3, True), (200, 12, 10, False)])
def test_guardrail_rolls_back_only_a_clearly_worse_candidate(n, errors_c, errors_s, rolled_back):
    state, reason, _ = decide(RULE, arm(n, 0.0, 50, errors_s), arm(n, 0.0, 50, errors_c))
    assert (state == "rolled_back" and reason.startswith("guardrail")) is rolled_back, reason


def test_reward_decides_when_format_errors_are_alike():
    state, reason, test = decide(RULE, arm(300, -20.0, 40, 15), arm(300, 5.0, 40, 15))
    assert state == "promoted" and reason.startswith("mSPRT") and test["p_value"] <= RULE.alpha


@pytest.mark.parametrize("diff", [+1.0, -1.0, +15.0])
def test_at_the_maximum_without_significance_it_extends_then_ends_inconclusive_never_promotes(diff):
    rule = RolloutRule(canary_share=0.5, min_queries=20, max_queries=1000, extend_queries=500, alpha=0.05, tau=20.0)
    stable = arm(1500, 0.0, 200, 50)
    state, reason, test = decide(rule, stable, arm(1000, diff, 200, 50))
    assert state is None and reason.startswith("extended") and test["p_value"] > rule.alpha, reason
    state, reason, test = decide(rule, stable, arm(1499, diff, 200, 50))
    assert state is None, reason
    state, reason, test = decide(rule, stable, arm(1500, diff, 200, 50))
    assert state == "inconclusive" and reason.startswith("inconclusive at 1500 queries"), reason
    assert test["ci_low"] < diff < test["ci_high"] and test["ci_low"] < 0 < test["ci_high"] and f"{diff:+.2f}" in reason
    assert decide(RolloutRule(min_queries=20, max_queries=1000, extend_queries=0, alpha=0.05, tau=20.0), stable, arm(1000, diff, 200, 50))[0] == "inconclusive"


def test_no_candidate_no_better_is_promoted_at_the_end():
    """A/A arms at the end of the budget: whatever the sign of the noise, nothing is promoted."""
    import numpy as np

    rng = np.random.default_rng(3)
    rule = RolloutRule(min_queries=20, max_queries=400, extend_queries=0, alpha=0.05, tau=20.0)
    states = []
    for _ in range(200):
        c, s = rng.normal(0, 50, 400), rng.normal(0, 50, 400)
        a = lambda x: Arm(ArmEvidence(queries=len(x), reward_per_query=x.mean(), format_error_rate=0.0), ArmStats.of(x))  # noqa: E731
        states.append(decide(rule, a(s), a(c))[0])
    assert states.count("promoted") <= 0.05 * len(states) and states.count("inconclusive") >= 0.9 * len(states)


def test_every_decision_records_estimate_interval_users_and_queries():
    rows = lambda n, r: [{"queries": 1, "reward_sum": r + (i % 2) * 10, "reward_sq_sum": (r + (i % 2) * 10) ** 2, "revenue_sum": 0.0, "format_errors": 0} for i in range(n)]  # noqa: E731
    state, reason, test = decide(RULE, arm_of_users(rows(300, 0.0)), arm_of_users(rows(300, 20.0)))
    assert state == "promoted"
    assert {"diff", "ci_low", "ci_high", "p_value", "variance", "variance_iid"} <= set(test)
    assert "300 queries / 300 users" in reason and "confidence sequence" in reason


def user_rows(per_user: list[list[float]], errors: int = 0) -> list[dict]:
    return [{"user_id": f"u{i}", "queries": len(ys), "reward_sum": sum(ys), "reward_sq_sum": sum(y * y for y in ys), "revenue_sum": max(0.0, sum(ys)),
             "format_errors": errors} for i, ys in enumerate(per_user)]


def test_an_arm_is_built_per_user_and_one_heavy_user_widens_the_variance():
    # 10 users with one query each, and one user who asked 40 queries all earning 100
    light = [[float(v)] for v in (0, 10, 0, 10, 0, 10, 0, 10, 0, 10)]
    a = arm_of_users(user_rows(light + [[100.0] * 40]))
    assert (a.evidence.queries, a.evidence.users) == (50, 11)
    assert a.reward.mean == pytest.approx((50 + 4000) / 50) == a.evidence.reward_per_query
    assert a.reward_iid.mean == a.reward.mean and a.reward.var > 5 * a.reward_iid.var  # per-user variance >> iid
    one_each = arm_of_users(user_rows(light))
    assert one_each.reward.var == pytest.approx(one_each.reward_iid.var) == pytest.approx(ArmStats.of([v[0] for v in light]).var)
    assert arm_of_users([]).evidence.queries == 0 and arm_of_users([]).covariate is None


def test_a_single_user_arm_is_no_evidence_and_ends_inconclusive_not_rolled_back():
    rule = RolloutRule(min_queries=20, max_queries=100, extend_queries=0, alpha=0.05, tau=20.0)
    stable = arm_of_users(user_rows([[0.0, 50.0]] * 100))
    cand = arm_of_users(user_rows([[-100.0] * 100]))  # 100 queries, one user: a difference of 125, but one unit
    state, reason, test = decide(rule, stable, cand)
    assert state == "inconclusive" and "1 users" in reason and "ci_low" not in test  # the unbounded interval is left out


def test_the_controller_counts_only_answers_whose_attribution_window_closed():
    """The warehouse query cuts responses (not clicks) at ``until``; the controller passes now - window."""
    from datetime import datetime, timedelta, timezone

    from llm_auction.consumers.rollout_controller import RolloutController
    from llm_auction.infra import warehouse
    from llm_auction.schemas import RolloutEvent

    sql = warehouse.ARM_USERS_SQL
    responses, clicks = sql.split("LEFT JOIN")
    assert "ts < {until:DateTime64(3, 'UTC')}" in responses and "until" not in clicks
    assert "click_probability" not in sql.split("FROM", 1)[0] and "GROUP BY policy_version, user_id" in sql

    seen = {}

    class Store:
        def arms(self, versions, since, until):
            seen.update(since=since, until=until)
            return {v: arm_of_users([]) for v in versions}

    ctl = RolloutController.__new__(RolloutController)
    ctl.rule, ctl.store, ctl.name = RolloutRule(attribution_window_s=30.0), Store(), "t"
    started = datetime.now(timezone.utc) - timedelta(minutes=5)
    ctl.history = [RolloutEvent(stable_version="base", candidate_version="c", candidate_share=0.1, state="canary", decided_at=started)]
    before = datetime.now(timezone.utc)
    assert ctl._evaluate(ctl.history[-1]) is None  # no answers: waits
    assert seen["since"] == started and before - timedelta(seconds=30) - timedelta(seconds=1) < seen["until"] <= datetime.now(timezone.utc) - timedelta(seconds=30)


def test_cuped_covariate_tightens_the_interval_and_keeps_the_estimate():
    import numpy as np

    rng = np.random.default_rng(5)

    def rows(effect, n=400):
        x = rng.normal(50, 20, n)  # a per-query prediction the arm does not change
        y = x + rng.normal(0, 10, n) + effect
        return [{"queries": 1, "reward_sum": b, "reward_sq_sum": b * b, "revenue_sum": 0.0, "format_errors": 0, "covariate_sum": a} for a, b in zip(x, y)]

    s, c = arm_of_users(rows(0.0)), arm_of_users(rows(3.0))
    assert s.covariate is not None
    _, _, adjusted = decide(RULE, s, c)
    _, _, plain = decide(RULE, Arm(s.evidence, s.reward, s.format_error), Arm(c.evidence, c.reward, c.format_error))
    assert "cuped_theta" in adjusted and "cuped_theta" not in plain and adjusted["cuped_theta"] == pytest.approx(1.0, abs=0.1)
    assert adjusted["ci_high"] - adjusted["ci_low"] < 0.7 * (plain["ci_high"] - plain["ci_low"])
    assert adjusted["unadjusted_diff"] == plain["diff"] and abs(adjusted["diff"] - 3.0) < abs(plain["diff"] - 3.0) + 2.0


def test_the_rule_defaults_are_the_settings_defaults():
    """One place for each default: RolloutRule's come from the LLMA_ROLLOUT_* settings."""
    from llm_auction.consumers.rollout_controller import RULE_SETTINGS
    from llm_auction.schemas.settings import Settings

    assert RolloutRule.from_settings(Settings()) == RolloutRule()
    assert RolloutRule.from_settings(Settings(rollout_min_queries=7, rollout_mixture_sd=3.0)).min_queries == 7
    assert set(RULE_SETTINGS) == {f for f in RolloutRule.__dataclass_fields__}


def test_the_monitor_shows_an_inconclusive_candidate_as_such_and_out():
    from llm_auction.cli.monitor import version_states

    decisions = [
        {"stable_version": "base", "candidate_version": "p1", "candidate_share": 0.1, "state": "canary"},
        {"stable_version": "base", "candidate_version": "p1", "candidate_share": 0.0, "state": "inconclusive"},
    ]
    assert version_states(decisions) == [{"policy_version": "base", "share": 1.0, "state": "stable"},
                                         {"policy_version": "p1", "share": 0.0, "state": "inconclusive"}]
