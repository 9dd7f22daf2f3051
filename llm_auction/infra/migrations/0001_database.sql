-- The database every warehouse object lives in, and the ledger of applied migrations.
-- schema_migrations is a ReplacingMergeTree keyed by version: recording a version twice (two
-- migrators racing) still reads back as one row with FINAL.
CREATE DATABASE IF NOT EXISTS llm_auction;

CREATE TABLE IF NOT EXISTS llm_auction.schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version;
