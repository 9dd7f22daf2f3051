-- Realized reward per query (Eq. 8 with the observed clicks in place of pCTR, an unbiased
-- estimate of the mechanism's objective when clicks follow the true CTR): the first-price revenue
-- plus lambda (= 1) times the user-experience penalty -10 * N_ad^2 - 500 * 1{format error}, over
-- answered queries. Both revenue views gain the column; everything else is as in 0003.

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
        sum(bid * clicked) AS revenue
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
        sum(bid * clicked) AS revenue
    FROM llm_auction.clicks FINAL
    GROUP BY policy_version
) AS c
USING (policy_version);
