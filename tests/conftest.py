"""Shared test wiring. Backend fixtures live in plugins, one per real part:

- ``fixtures_kafka``: ``kafka_bootstrap`` (env var, else testcontainers with a Docker engine,
  else the local Tansu broker);
- ``fixtures_clickhouse``: ``clickhouse_client`` (env var, else testcontainers, else chdb).

Each plugin adds a line to the pytest header naming the backend it chose.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [p for p in ("fixtures_kafka", "fixtures_clickhouse") if os.path.exists(os.path.join(os.path.dirname(__file__), p + ".py"))]
