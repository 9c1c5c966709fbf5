"""Fixtures of the Docker-mode tests. The container engine, the compose env file and the images
(fixtures shared with tests/reliability) are in tests/container_fixtures.py; the names and helpers
(engine_url, compose, image_name, ...) in tests/containers.py."""

from __future__ import annotations

import pytest

from tests.containers import IMAGE_TAG


@pytest.fixture
def docker_mode(engine, platform_env, monkeypatch) -> None:
    """The launcher in Docker mode, as the deployment's environment sets it; worker containers join
    the host's network to reach the host's Postgres and S3 server on 127.0.0.1. After platform_env,
    which sets subprocess mode."""
    monkeypatch.setenv("WORKER_LAUNCH_MODE", "docker")
    monkeypatch.setenv("WORKER_DOCKER_NETWORK", "host")
    monkeypatch.setenv("WORKER_IMAGE_TAG", IMAGE_TAG)


@pytest.fixture
def db_url(postgres_url: str) -> str:
    """Postgres only: a container cannot open the host's SQLite file (overrides tests/conftest.py)."""
    return postgres_url
