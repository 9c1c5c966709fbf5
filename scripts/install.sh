#!/usr/bin/env bash
# Creates .venv and installs the workers and the orchestrator, pinned by constraints.txt.
# Idempotent: skips pip when nothing it depends on changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "install: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=$(cat constraints.txt workers/pyproject.toml orchestrator/pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.installed 2>/dev/null)" != "$stamp" ]; then
  echo "install: installing into .venv (pinned by constraints.txt)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c constraints.txt -e "./workers[test]" -e "./orchestrator[dev]"
  echo "$stamp" > .venv/.installed
fi
