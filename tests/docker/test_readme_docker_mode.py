"""The README's Docker-mode commands (its ```sh blocks), run verbatim, in order, in a fresh copy of the
repository against the container engine, as a new user runs them. Fails if a command in those
blocks was not run.

Added to what the README says, and nothing else: where MinIO's image cannot be pulled, the
README's one line for the S3 stand-in in `.env`; and, in the environment (compose reads it over
`.env`), a project name, a network and ports of this test's own, so it runs beside other stacks on
the same engine. Only commands the README marks as needing a registry pull are skipped, and only
while MinIO's image is absent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import docker.errors
import pytest

from tests.services import REPO, free_port_block, fresh_copy

README = (REPO / "README.md").read_text()
DOCKER_MODE = README[README.index("## Docker mode") : README.index("### Docker-mode troubleshooting")]
NEEDS_PULL = "a registry pull"
STANDIN_LINE = "MINIO_IMAGE=localhost/health-intake-standin-s3:latest"
FOLLOWS_LOGS = "make logs"
PORTS = ("DAGSTER_PORT", "DAGSTER_VIEWER_PORT", "METADATA_POSTGRES_PORT", "MINIO_PORT", "MINIO_CONSOLE_PORT")

pytestmark = pytest.mark.slow


def readme_sh_lines() -> list[tuple[str, str]]:
    """(command, its comment) for every command line of the Docker-mode section's sh blocks."""
    blocks = re.findall(r"```sh\n(.*?)```", DOCKER_MODE, re.S)
    pairs = [line.partition("  #")[::2] for block in blocks for line in block.splitlines()]
    return [(command.strip(), comment) for command, comment in pairs if command.strip()]


class ReadmeUser:
    """A shell in the fresh copy, with this test's own project name, network and ports."""

    def __init__(self, copy: Path):
        self.copy = copy
        name = f"health-intake-readme-{uuid.uuid4().hex[:8]}"
        ports = {port: str(free_port_block(1)) for port in PORTS}
        self.env = {**os.environ, **ports, "COMPOSE_PROJECT_NAME": name, "WORKER_DOCKER_NETWORK": name}
        self.ran: list[str] = []

    def run(self, command: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        self.ran.append(command)
        return subprocess.run(
            ["bash", "-c", command], cwd=self.copy, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def follow_for(self, command: str, seconds: float) -> str:
        """A command that follows (logs -f) until Ctrl-C: run it for a while, then stop its group."""
        self.ran.append(command)
        with subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.copy,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        ) as follower:
            time.sleep(seconds)
            os.killpg(follower.pid, signal.SIGINT)
            return follower.communicate(timeout=60)[0]

    def use_the_s3_standin(self) -> None:
        """The README's one line for machines that cannot pull MinIO, in place of .env's MINIO_IMAGE."""
        env_file = self.copy / ".env"
        lines = [line for line in env_file.read_text().splitlines() if not line.startswith("MINIO_IMAGE=")]
        env_file.write_text("\n".join([*lines, STANDIN_LINE]) + "\n")

    def stop(self) -> None:
        self.run("docker-compose down -v --remove-orphans", timeout=600)


@pytest.fixture
def readme_user(engine, tmp_path):
    user = ReadmeUser(fresh_copy(tmp_path / "repo"))
    yield user
    user.stop()


def minio_image_present(engine) -> bool:
    try:
        engine.images.get("quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z")
        return True
    except docker.errors.ImageNotFound:
        return False


def test_readme_names_the_standin_setting_it_uses():
    assert f"`{STANDIN_LINE}`" in DOCKER_MODE
    assert "S3_ROLES_PROVISIONING=static" not in DOCKER_MODE.split("### The stack")[0]


def test_the_readme_docker_mode_commands_run_verbatim_and_materialize_the_heartbeat(readme_user, engine):
    can_pull_minio = minio_image_present(engine)
    skipped = []
    for command, comment in readme_sh_lines():
        if NEEDS_PULL in comment and not can_pull_minio:
            skipped.append(command)
            continue
        if command == FOLLOWS_LOGS:
            assert "dagster_daemon" in readme_user.follow_for(command, seconds=10)
            continue
        started = time.monotonic()
        done = readme_user.run(command)
        assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        print(f"{command}: {time.monotonic() - started:.0f} s")
        check_what_the_readme_promises(readme_user, command, done)
        if command == "make env" and not can_pull_minio:
            readme_user.use_the_s3_standin()

    print(f"skipped, as the README marks them (needs a registry pull): {skipped}")
    untested = [command for command, _ in readme_sh_lines() if command not in readme_user.ran + skipped]
    assert untested == [], "README Docker-mode commands this test did not run"


def check_what_the_readme_promises(user: ReadmeUser, command: str, done: subprocess.CompletedProcess) -> None:
    if command.endswith("--help"):
        assert "--pipes" in done.stdout
    elif command == "make up":
        assert "UI ready" in done.stdout
    elif command.startswith("make dagster-cli") and "materialize" in command:
        assert "RUN_SUCCESS" in done.stdout + done.stderr
    elif command.startswith("make psql") and "bootstrap_heartbeat" in command:
        assert "phase0_ok" in done.stdout
    elif command.startswith("make down"):
        assert user.run("docker-compose ps -q").stdout.strip() == ""
