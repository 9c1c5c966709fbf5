# Operator and developer shortcuts. Each target is one documented command, nothing hidden.
.PHONY: test

# The whole test suite; installs .venv first (pinned), starts its own S3 server and databases.
test:
	./scripts/install.sh
	.venv/bin/python -m pytest
