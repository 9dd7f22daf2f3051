"""Shared test wiring. Backend fixtures live in plugins, one per real part:

- ``fixtures_kafka``: ``kafka_bootstrap`` (env var, else testcontainers with a Docker engine,
  else the local Tansu broker);
- ``fixtures_clickhouse``: ``clickhouse_client`` (env var, else testcontainers, else chdb);
- ``models_fixtures``: ``tiny_model_dir`` / ``tiny_adllm`` (the tiny GPT-2, built once per session).

Each plugin adds a line to the pytest header naming the backend it chose.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["fixtures_kafka", "fixtures_clickhouse", "models_fixtures"]

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def text_encoder():
    """One MiniLM encoder for the whole session (loading it costs seconds; its cache is shared)."""
    from llm_auction.models.encoder import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A 40-user world (200 queries, 40 test) generated once per session."""
    from llm_auction.producers.world import World, WorldSpec, generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, WorldSpec(seed=5, n_users=40, queries_per_user=5, n_test=40), progress=False)
    return World(root)

