"""Fixtures for the tests that run worker containers (tests/docker, and the Docker mode of
tests/reliability/test_secrets.py): the container engine, a compose env file, the images built.
A plugin of the root conftest (pytest_plugins), so every directory shares one session-scoped build.
The root conftest marks every test that uses one of these `containers`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import docker
import pytest

from tests.containers import ENGINE_SCRIPT, SOCKETS, WORKERS, compose, compose_env_file, engine_url, skip_without_engine


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    url = engine_url()
    if url is None:
        skip_without_engine(
            f"no container engine answers at DOCKER_HOST or {', '.join(SOCKETS)}; run {ENGINE_SCRIPT} (as root)"
        )
    # PipesDockerClient and the docker-compose CLI find the engine through the environment.
    os.environ["DOCKER_HOST"] = url
    return docker.DockerClient(base_url=url, timeout=600)


@pytest.fixture(scope="session")
def env_file(tmp_path_factory) -> Path:
    return compose_env_file(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="session")
def images(engine, env_file) -> dict[str, float]:
    """Builds every image as `make images` does; returns the seconds each build took, by image."""
    timings = {}
    for service in (*WORKERS, "dagster_webserver"):
        started = time.monotonic()
        done = compose("--profile", "workers", "build", service, env_file=env_file)
        assert done.returncode == 0, f"building {service} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        timings[service.removesuffix("_webserver")] = time.monotonic() - started
    return timings
