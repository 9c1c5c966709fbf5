"""`make test-quick`, the README's inner loop, as a developer runs it: it passes and selects what the
Makefile says (no container, reliability, Postgres or Dagster-run test). Its wall time is printed,
not asserted (timings belong to the benchmark)."""

import re
import subprocess
import time

import pytest

from tests.services import REPO

pytestmark = pytest.mark.slow  # runs a suite of its own; never part of test-quick itself


def test_make_test_quick_passes_and_leaves_out_the_slow_parts():
    started = time.monotonic()
    done = subprocess.run(["make", "-s", "test-quick"], cwd=REPO, capture_output=True, text=True, timeout=900)
    print(f"make test-quick: {time.monotonic() - started:.0f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    passed, deselected = (int(re.search(rf"(\d+) {word}", summary).group(1)) for word in ("passed", "deselected"))
    assert passed > 100 and deselected > 100, summary
    assert not re.search(r"\d+ (failed|error|skipped)", summary), summary
    assert "tests/docker/" not in done.stdout and "tests/reliability/" not in done.stdout
