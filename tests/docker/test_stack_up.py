"""`make up`'s script (scripts/stack_up.sh) when a one-shot step fails: it names the step and shows
its last log lines. A two-service compose file of its own stands in for the stack here (the real
stack coming up is tests/docker/test_stack.py), so the failure costs seconds, not a stack."""

import os
import subprocess
import uuid

import pytest

from tests.conftest import REPO

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


@pytest.fixture
def failing_stack(engine, tmp_path):
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(FAILING_STEP)
    compose = f"docker-compose -p health-intake-upfail-{uuid.uuid4().hex[:8]} -f {compose_file}"
    yield compose
    subprocess.run([*compose.split(), "down", "-v", "--remove-orphans"], capture_output=True, timeout=300)


def test_make_up_names_the_failed_step_and_prints_its_last_log_lines(failing_stack):
    done = subprocess.run(
        ["./scripts/stack_up.sh"],
        cwd=REPO,
        env={**os.environ, "COMPOSE": failing_stack, "UP_TIMEOUT_SECONDS": "60"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "make up: step roles_apply failed (exit code 2)" in done.stderr, done.stderr[-3000:]
    assert "roles: something the operator must read" in done.stderr
