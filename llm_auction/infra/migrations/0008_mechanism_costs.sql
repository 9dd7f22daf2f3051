-- What a mechanism's answer cost and what its clicks pay (events schema version 6).
--
-- responses gains the answer's cost, counted by the responder: generations (answers the model
-- wrote for the query: 1 for a policy, N for best-of-N), generated_tokens (theirs; 0 when
-- unknown) and generation_s (the query's share of its batch's generation seconds); and prices,
-- the per-click price of each exposed ad in exposure order (empty: first price, the bid).
-- clicks gains price, what the click pays (NULL: the bid). The defaults are what an older event
-- means, so rows written before this migration read as one generation, unknown cost, first price.
-- ADD COLUMN appends at the end; the sink's Arrow inserts name their columns, so order is free.
--
-- Revenue is now what the clicks pay: sum(coalesce(price, toFloat64(bid)) * clicked), a Float64
-- (a second price need not be an integer). Both revenue views are rebuilt with it, otherwise as in
-- 0005; impressions keeps bid, the pCTR model's feature, not a payment.

ALTER TABLE llm_auction.responses
    ADD COLUMN IF NOT EXISTS generations      UInt16 DEFAULT 1,
    ADD COLUMN IF NOT EXISTS generated_tokens UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS generation_s     Float64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS prices           Array(Float64);

ALTER TABLE llm_auction.clicks
    ADD COLUMN IF NOT EXISTS price Nullable(Float64);

CREATE OR REPLACE VIEW llm_auction.revenue_per_minute AS
SELECT
    minute,
    policy_version,
    r.queries AS queries,
    r.exposures AS exposures,
    c.clicks AS clicks,
    c.revenue AS revenue,
    r.exposures / nullIf(r.queries, 0) AS ads_per_answer,
    r.format_errors / nullIf(r.queries, 0) AS format_error_rate,
    c.clicks / nullIf(r.exposures, 0) AS ctr,
    (coalesce(c.revenue, 0) + r.penalty) / nullIf(r.queries, 0) AS reward_per_query
FROM
(
    SELECT
        toStartOfMinute(ts) AS minute,
        policy_version,
        count() AS queries,
        sum(n_ads) AS exposures,
        sum(format_error) AS format_errors,
        sum(-10 * n_ads * n_ads - 500 * format_error) AS penalty
    FROM llm_auction.responses FINAL
    GROUP BY minute, policy_version
) AS r
FULL OUTER JOIN
(
    SELECT
        toStartOfMinute(ts) AS minute,
        policy_version,
        sum(clicked) AS clicks,
        sum(coalesce(price, toFloat64(bid)) * clicked) AS revenue
    FROM llm_auction.clicks FINAL
    GROUP BY minute, policy_version
) AS c
USING (minute, policy_version);

CREATE OR REPLACE VIEW llm_auction.revenue_by_policy AS
SELECT
    policy_version,
    r.queries AS queries,
    r.exposures AS exposures,
    c.clicks AS clicks,
    c.revenue AS revenue,
    c.revenue / nullIf(r.queries, 0) AS revenue_per_query,
    r.exposures / nullIf(r.queries, 0) AS ads_per_answer,
    r.format_errors / nullIf(r.queries, 0) AS format_error_rate,
    c.clicks / nullIf(r.exposures, 0) AS ctr,
    (coalesce(c.revenue, 0) + r.penalty) / nullIf(r.queries, 0) AS reward_per_query
FROM
(
    SELECT
        policy_version,
        count() AS queries,
        sum(n_ads) AS exposures,
        sum(format_error) AS format_errors,
        sum(-10 * n_ads * n_ads - 500 * format_error) AS penalty
    FROM llm_auction.responses FINAL
    GROUP BY policy_version
) AS r
FULL OUTER JOIN
(
    SELECT
        policy_version,
        sum(clicked) AS clicks,
        sum(coalesce(price, toFloat64(bid)) * clicked) AS revenue
    FROM llm_auction.clicks FINAL
    GROUP BY policy_version
) AS c
USING (policy_version);
