"""Consumers: long-running services that read one topic and write the next (responder,
user simulator, ClickHouse sink), with at-least-once delivery and a dead-letter path."""
