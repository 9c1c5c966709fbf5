# Operator and developer shortcuts. Each target is one documented command, nothing hidden.
.PHONY: test

# The whole test suite; installs .venv first (pinned), starts its own S3 server and databases.
test:
	./scripts/install.sh
	.venv/bin/python -m pytest

.PHONY: lint
# ruff's checks and formatter (the test suite runs the same).
lint:
	./scripts/install.sh
	.venv/bin/python -m ruff check .
	.venv/bin/python -m ruff format --check .
