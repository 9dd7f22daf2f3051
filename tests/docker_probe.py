"""Whether a Docker engine answers: the fixture plugins use testcontainers only then."""

from __future__ import annotations

import os


def docker_answers(timeout_s: float = 2.0) -> bool:
    """True if a Docker engine answers a ping quickly (no socket, no engine: False at once)."""
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return False
    try:
        import docker

        client = docker.from_env(timeout=int(max(1, timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no usable engine"
        return False
