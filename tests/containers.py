"""A container engine for the Docker-mode tests, and the project's images built on it: the names and
helpers (the fixtures that start or build them are in tests/container_fixtures.py).

The engine is whatever answers Docker's API at DOCKER_HOST, else Podman's socket, else
/var/run/docker.sock. Without one these tests skip, naming the script that sets one up; with
REQUIRE_CONTAINER_ENGINE=1 (as .ci/run sets) they fail instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from tests.services import REPO
from workers.catalogue import IMAGES

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


def image_name(worker: str) -> str:
    return f"{IMAGE_PREFIX}-{worker}:{IMAGE_TAG}"
