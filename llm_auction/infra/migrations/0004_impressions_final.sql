-- impressions, rebuilt on deduplicated rows (FINAL) instead of GROUP BY content keys: the same
-- rows for the expected traffic, about 4x faster to read, and a filter on ts (the answer's) now
-- reaches the responses scan through the join.
--
-- One labeled row per (answer, exposed ad with a decision) for pCTR training. Clicks on ads the
-- answer did not expose are not impressions and are left out; an answer whose decisions have not
-- arrived yet has no rows until they do. Assumes one answer per (query_id, policy_version), which
-- holds when a re-answered query repeats its response's event_id and ts.
CREATE OR REPLACE VIEW llm_auction.impressions AS
SELECT
    r.query_id AS query_id,
    r.ts AS ts,
    r.policy_version AS policy_version,
    r.user_id AS user_id,
    r.query AS query,
    r.text AS text,
    c.ad_id AS ad_id,
    c.bid AS bid,
    c.clicked AS clicked
FROM llm_auction.responses AS r FINAL
INNER JOIN llm_auction.clicks AS c FINAL
    ON r.query_id = c.query_id AND r.policy_version = c.policy_version
WHERE has(r.exposed_ad_ids, c.ad_id);
