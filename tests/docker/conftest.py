"""A container engine for the Docker-mode tests, and the project's images built on it.

The engine is whatever answers Docker's API at DOCKER_HOST, else Podman's socket, else
/var/run/docker.sock. Without one these tests skip, naming the script that sets one up; with
REQUIRE_CONTAINER_ENGINE=1 (as .ci/run sets) they fail instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
from workers.catalogue import IMAGES

from tests.conftest import REPO

SOCKETS = ("unix:///run/podman/podman.sock", "unix:///var/run/docker.sock")
WORKERS = IMAGES  # one image per entry of workers.catalogue.IMAGES
IMAGE_PREFIX = "health-intake"
# Two checkouts sharing one engine build their images under tags of their own (compose reads the
# shell's WORKER_IMAGE_TAG before the env file's).
IMAGE_TAG = os.environ.get("WORKER_IMAGE_TAG", "latest")
ENGINE_SCRIPT = "scripts/container_engine.sh"


def engine_url() -> str | None:
    for url in ([os.environ["DOCKER_HOST"]] if os.environ.get("DOCKER_HOST") else []) + list(SOCKETS):
        try:
            docker.DockerClient(base_url=url, timeout=10).ping()
            return url
        except Exception:  # noqa: BLE001 - nothing answers there; try the next
            continue
    return None


def skip_without_engine(reason: str) -> None:
    """Skip, or fail where an engine is required (CI): a skipped Docker test proves nothing."""
    if os.environ.get("REQUIRE_CONTAINER_ENGINE") == "1":
        pytest.fail(f"REQUIRE_CONTAINER_ENGINE=1 but {reason}")
    pytest.skip(reason)


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


def compose_env_file(directory: Path) -> Path:
    """.env.example with the required secrets filled in, as `make env` does."""
    path = directory / "compose.env"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts/new_env.py"), str(path), str(REPO / ".env.example")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return path


def compose(*args: str, env_file: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker-compose", "--env-file", str(env_file), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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


def image_name(worker: str) -> str:
    return f"{IMAGE_PREFIX}-{worker}:{IMAGE_TAG}"


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
