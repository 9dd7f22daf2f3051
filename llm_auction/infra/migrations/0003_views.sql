-- Read-side views. They aggregate the deduplicated rows (FINAL) at read time, so a replayed
-- batch can never count twice, whatever its batch boundaries (see llm_auction/infra/ddl.py).
--
-- Definitions (first price, Eq. 7): revenue = sum of bid over clicked rows; queries = answered
-- queries (responses); exposures = sum of n_ads; clicks = sum of clicked;
-- ads_per_answer = exposures / queries; format_error_rate = answers with a format error / queries;
-- ctr = clicks / exposures; revenue_per_query = revenue / queries. A ratio with a zero
-- denominator is NULL. Per minute, responses count in the minute of their ts and clicks in the
-- minute of theirs.

CREATE VIEW IF NOT EXISTS llm_auction.revenue_per_minute AS
SELECT
    minute,
    policy_version,
    r.queries AS queries,
    r.exposures AS exposures,
    c.clicks AS clicks,
    c.revenue AS revenue,
    r.exposures / nullIf(r.queries, 0) AS ads_per_answer,
    r.format_errors / nullIf(r.queries, 0) AS format_error_rate,
    c.clicks / nullIf(r.exposures, 0) AS ctr
FROM
(
    SELECT
        toStartOfMinute(ts) AS minute,
        policy_version,
        count() AS queries,
        sum(n_ads) AS exposures,
        sum(format_error) AS format_errors
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

CREATE VIEW IF NOT EXISTS llm_auction.revenue_by_policy AS
SELECT
    policy_version,
    r.queries AS queries,
    r.exposures AS exposures,
    c.clicks AS clicks,
    c.revenue AS revenue,
    c.revenue / nullIf(r.queries, 0) AS revenue_per_query,
    r.exposures / nullIf(r.queries, 0) AS ads_per_answer,
    r.format_errors / nullIf(r.queries, 0) AS format_error_rate,
    c.clicks / nullIf(r.exposures, 0) AS ctr
FROM
(
    SELECT
        policy_version,
        count() AS queries,
        sum(n_ads) AS exposures,
        sum(format_error) AS format_errors
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

-- One labeled row per (query_id, policy_version, exposed ad) for pCTR training: the answer and the
-- user's decision. GROUP BY dedups replays by content key (no FINAL needed); if replays ever
-- produced two different answers or decisions for one key, the earliest (ts, event_id) wins.
-- Clicks on ads the answer did not expose are not impressions and are left out.
CREATE VIEW IF NOT EXISTS llm_auction.impressions AS
SELECT
    r.query_id AS query_id,
    r.first_ts AS ts,
    r.policy_version AS policy_version,
    r.user_id AS user_id,
    r.query AS query,
    r.text AS text,
    c.ad_id AS ad_id,
    c.bid AS bid,
    c.clicked AS clicked
FROM
(
    SELECT
        query_id,
        policy_version,
        min(ts) AS first_ts,
        argMin(user_id, (ts, event_id)) AS user_id,
        argMin(query, (ts, event_id)) AS query,
        argMin(text, (ts, event_id)) AS text,
        argMin(exposed_ad_ids, (ts, event_id)) AS exposed_ad_ids
    FROM llm_auction.responses
    GROUP BY query_id, policy_version
) AS r
INNER JOIN
(
    SELECT
        query_id,
        policy_version,
        ad_id,
        argMin(bid, (ts, event_id)) AS bid,
        argMin(clicked, (ts, event_id)) AS clicked
    FROM llm_auction.clicks
    GROUP BY query_id, policy_version, ad_id
) AS c
ON r.query_id = c.query_id AND r.policy_version = c.policy_version
WHERE has(r.exposed_ad_ids, c.ad_id);
