-- Raw event tables, one row per event, deduplicated by event_id (see llm_auction/infra/ddl.py).
--
-- ReplacingMergeTree collapses rows with equal sorting keys. The key is (ts, event_id): a replayed
-- event is the same frozen JSON, so it repeats ts and event_id exactly and collapses with its
-- original, and ts leads because the stream arrives in time order, so successive insert batches
-- cover disjoint key ranges and SELECT ... FINAL merges nothing but the ranges a replay overlaps.
-- A duplicate shares its original's ts, hence its day partition, so FINAL within partitions is
-- enough. Every read that counts goes through FINAL (the views in 0003) until a merge catches up.

CREATE TABLE IF NOT EXISTS llm_auction.queries
(
    event_id     String,
    ts           DateTime64(3, 'UTC'),
    query_id     String,
    user_id      String,
    query        String,
    split        LowCardinality(String),
    n_candidates UInt16,
    bids         Map(LowCardinality(String), UInt8)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (ts, event_id);

CREATE TABLE IF NOT EXISTS llm_auction.responses
(
    event_id       String,
    ts             DateTime64(3, 'UTC'),
    query_id       String,
    policy_version LowCardinality(String),
    user_id        String,
    query          String,
    text           String,
    exposed_ad_ids Array(String),
    n_ads          UInt16,
    format_error   UInt8,
    format_reasons Array(String),
    shown_ad_ids   Array(String),
    latency_ms     Float64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (ts, event_id);

CREATE TABLE IF NOT EXISTS llm_auction.clicks
(
    event_id          String,
    ts                DateTime64(3, 'UTC'),
    query_id          String,
    ad_id             LowCardinality(String),
    clicked           UInt8,
    reason            String,
    policy_version    LowCardinality(String),
    user_id           String,
    bid               UInt8,
    click_probability Nullable(Float64)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (ts, event_id);
