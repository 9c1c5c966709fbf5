"""The lint the Makefile's `lint` target runs: ruff's checks and its formatter over the whole tree,
and the type checker over the workers and the orchestrator (mypy.ini)."""

import subprocess
import sys

from tests.services import REPO


def ruff(*args: str) -> subprocess.CompletedProcess:
    return tool("ruff", *args)


def tool(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing():
    done = ruff("check", ".")
    assert done.returncode == 0, done.stdout


def test_the_tree_is_formatted():
    done = ruff("format", "--check", ".")
    assert done.returncode == 0, done.stdout


def test_the_type_checker_finds_nothing():
    done = tool("mypy")
    assert done.returncode == 0, done.stdout + done.stderr
