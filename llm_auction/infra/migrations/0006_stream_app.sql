-- The stream app's own tables: the impressions it joined from auction.responses x auction.clicks,
-- and the pCTR versions it announced (its retraining watermark).
--
-- stream_impressions: one row per exposed ad with a decision, written in batches by the stream app.
-- A worker that restarts may join an impression again (events after its last committed offset are
-- redelivered); the repeat has the same key (the answer's ts, query_id, policy_version, ad_id), so
-- ReplacingMergeTree collapses it and every count reads FINAL rows. click_probability is the
-- simulator's truth when the click stream carries one (NULL otherwise), for the oracle metrics.
CREATE TABLE IF NOT EXISTS llm_auction.stream_impressions
(
    ts                DateTime64(3, 'UTC'),
    query_id          String,
    policy_version    LowCardinality(String),
    user_id           String,
    query             String,
    text              String,
    ad_id             LowCardinality(String),
    bid               UInt8,
    clicked           UInt8,
    click_probability Nullable(Float64),
    joined_at         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (ts, query_id, policy_version, ad_id);

-- stream_pctr_versions: one row per PctrVersion event the stream app sent (keyed by the event's
-- deterministic id), with the impression count it trained at: a restarted worker reads its
-- watermark here and never announces the same version twice.
CREATE TABLE IF NOT EXISTS llm_auction.stream_pctr_versions
(
    app_id            String,
    event_id          String,
    version           String,
    sha256            String,
    promoted          UInt8,
    impressions_total UInt64,
    window_rows       UInt64,
    announced_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (app_id, event_id);
