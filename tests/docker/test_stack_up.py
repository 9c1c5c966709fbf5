"""`make up`'s script (scripts/stack_up.sh) when a one-shot step fails or a service never becomes
healthy: it names the step or service and shows its last log lines. A two-service compose file of
its own stands in for the stack here (the real stack coming up is tests/docker/test_stack.py), so
the failure costs seconds, not a stack."""

import os
import re
import subprocess
import uuid

import pytest

from tests.services import REPO

FAILING_STEP = """
services:
  roles_apply:
    image: localhost/health-intake-standin-s3:latest
    entrypoint: ["sh", "-c", "echo 'roles: something the operator must read' >&2; exit 2"]
  dagster_daemon:
    image: localhost/health-intake-standin-s3:latest
    entrypoint: ["sleep", "600"]
    depends_on:
      roles_apply:
        condition: service_completed_successfully
"""


UNHEALTHY_WEBSERVER = """
services:
  dagster_webserver:
    image: localhost/health-intake-standin-s3:latest
    entrypoint: ["sh", "-c", "echo 'webserver: cannot load the code location' >&2; sleep 600"]
    healthcheck:
      test: ["CMD-SHELL", "exit 1"]
      interval: 2s
      retries: 2
  ui_proxy:
    image: localhost/health-intake-standin-s3:latest
    entrypoint: ["sleep", "600"]
    depends_on:
      dagster_webserver:
        condition: service_healthy
"""


# A failing step that is not among stack_up.sh's ONE_SHOT_STEPS (a service added later, say).
UNKNOWN_STEP = """
services:
  some_new_step:
    image: localhost/health-intake-standin-s3:latest
    entrypoint: ["sh", "-c", "exit 3"]
  dagster_daemon:
    image: localhost/health-intake-standin-s3:latest
    entrypoint: ["sleep", "600"]
    depends_on:
      some_new_step:
        condition: service_completed_successfully
"""


@pytest.fixture
def compose_project(engine, tmp_path):
    """A compose command for a file of the test's own, under a project name of its own."""
    compose_file = tmp_path / "docker-compose.yml"
    compose = f"docker-compose -p health-intake-upfail-{uuid.uuid4().hex[:8]} -f {compose_file}"
    yield compose_file, compose
    subprocess.run([*compose.split(), "down", "-v", "--remove-orphans"], capture_output=True, timeout=300)


def make_up(compose: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["./scripts/stack_up.sh"],
        cwd=REPO,
        env={**os.environ, "COMPOSE": compose, "UP_TIMEOUT_SECONDS": "60"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_make_up_names_the_failed_step_and_prints_its_last_log_lines(compose_project):
    compose_file, compose = compose_project
    compose_file.write_text(FAILING_STEP)
    done = make_up(compose)
    assert done.returncode == 1
    assert "make up: step roles_apply failed (exit code 2)" in done.stderr, done.stderr[-3000:]
    assert "roles: something the operator must read" in done.stderr


def test_make_up_names_a_service_that_never_becomes_healthy_and_prints_its_last_log_lines(compose_project):
    compose_file, compose = compose_project
    compose_file.write_text(UNHEALTHY_WEBSERVER)
    done = make_up(compose)
    assert done.returncode == 1
    assert "make up: service dagster_webserver is unhealthy" in done.stderr, done.stderr[-3000:]
    assert "webserver: cannot load the code location" in done.stderr


def test_make_up_lists_the_stacks_containers_when_no_known_step_failed(compose_project):
    compose_file, compose = compose_project
    compose_file.write_text(UNKNOWN_STEP)
    done = make_up(compose)
    assert done.returncode == 1
    assert "make up: the stack's containers:" in done.stderr, done.stderr[-3000:]
    assert re.search(r"some_new_step\S*\s+Exited \(3\)", done.stderr), done.stderr[-3000:]


# Podman 4.3's race (podman#16383) cannot be caused on demand, so a stand-in for docker-compose
# plays it: its first `up` fails with the engine's message, as the real one did in a full run
# (2026-12-06); every call is logged. Nothing answers as the UI, so make up ends at its short timeout.
FLAKY_COMPOSE = """#!/usr/bin/env bash
echo "$*" >> "{calls}"
if [ "$1" = up ] && [ ! -e "{calls}.raced" ]; then
  touch "{calls}.raced"
  echo "{message}" >&2
  exit 1
fi
exit 0
"""


@pytest.mark.parametrize(
    "message, again",
    [("read /proc/28218/cgroup: no such process", True), ("Error: image not known", False)],
)
def test_make_up_runs_up_again_only_after_podmans_cgroup_race(tmp_path, message, again):
    calls = tmp_path / "calls"
    compose = tmp_path / "compose"
    compose.write_text(FLAKY_COMPOSE.format(calls=calls, message=message))
    compose.chmod(0o755)
    done = subprocess.run(
        ["./scripts/stack_up.sh"],
        cwd=REPO,
        env={**os.environ, "COMPOSE": str(compose), "UP_TIMEOUT_SECONDS": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    ups = [line for line in calls.read_text().splitlines() if line.startswith("up")]
    assert message in done.stderr and done.returncode == 1
    if again:
        assert ups == ["up -d", "up -d"]
        assert "running up again" in done.stderr and "did not answer through ui_proxy" in done.stderr
    else:
        assert ups == ["up -d"]
        assert "docker-compose up failed" in done.stderr and "running up again" not in done.stderr
