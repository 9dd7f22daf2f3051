-- rollout_decisions: one row per RolloutEvent the rollout controller or a person decided, keyed
-- by the event's deterministic id (RolloutEvent.decision_id): a decision recorded twice (a
-- restarted controller) collapses to one row; read it with FINAL. `event` is the event's JSON
-- as announced on auction.rollout, so a decision recorded but not announced can be sent again
-- unchanged (consumers/rollout_controller.py).
CREATE TABLE IF NOT EXISTS llm_auction.rollout_decisions
(
    decision_id       String,
    decided_at        DateTime64(3, 'UTC'),
    stable_version    LowCardinality(String),
    candidate_version String,
    candidate_share   Float64,
    state             LowCardinality(String),
    reason            String,
    decided_by        String,
    evidence          String,
    test              String,
    event             String
)
ENGINE = ReplacingMergeTree
ORDER BY decision_id;
