"""Infrastructure: Kafka admin, client factories and the local broker; the ClickHouse client and
DDL. Never imports a model or a service."""
