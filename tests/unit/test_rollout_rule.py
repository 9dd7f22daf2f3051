"""The controller's decision rule (consumers/rollout_controller.decide) on hand-made arms:
the minimum, the format-error guardrail as a sequential test, the reward mSPRT, the maximum."""

from __future__ import annotations

import pytest

from llm_auction.consumers.rollout_controller import Arm, RolloutRule, decide
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


def test_the_maximum_lets_the_point_estimate_decide():
    state, reason, _ = decide(RULE, arm(1000, 0.0, 200, 50), arm(1000, -1.0, 200, 50))
    assert state == "rolled_back" and reason.startswith("maximum sample")


def test_the_rule_defaults_are_the_settings_defaults():
    """One place for each default: RolloutRule's come from the LLMA_ROLLOUT_* settings."""
    from llm_auction.consumers.rollout_controller import RULE_SETTINGS
    from llm_auction.schemas.settings import Settings

    assert RolloutRule.from_settings(Settings()) == RolloutRule()
    assert RolloutRule.from_settings(Settings(rollout_min_queries=7, rollout_mixture_sd=3.0)).min_queries == 7
    assert set(RULE_SETTINGS) == {f for f in RolloutRule.__dataclass_fields__}
