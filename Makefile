# Operator and developer shortcuts. Each target is one documented command, nothing hidden.
.PHONY: test

# The whole test suite; installs .venv first (pinned), starts its own S3 server and databases.
test:
	./scripts/install.sh
	.venv/bin/python -m pytest

.PHONY: test-quick
# The inner loop (under 2 minutes): the workers' logic, the sensors' decisions and the settings, on SQLite
# and the suite's S3 server. Leaves out the Postgres variants and Postgres-only tests, Dagster runs that
# launch worker processes, containers, the reliability suite, dev_up.sh and the benchmark (make test runs all).
test-quick:
	./scripts/install.sh
	.venv/bin/python -m pytest -m "not (postgres or dagster_runs or containers or reliability or slow or bench)"

.PHONY: lint
# ruff's checks and formatter, and the type checker (mypy.ini); the test suite runs the same.
lint:
	./scripts/install.sh
	.venv/bin/python -m ruff check .
	.venv/bin/python -m ruff format --check .
	.venv/bin/python -m mypy

# --- Docker mode (README "Docker mode"). Settings come from .env (cp .env.example .env). -----
COMPOSE ?= docker-compose
.PHONY: engine env images up down logs dagster-cli psql minio-shell

# Rootful Podman with Docker's API, for machines without a Docker engine (run as root).
engine:
	./scripts/container_engine.sh

# .env from .env.example with every REQUIRED secret set to a fresh random value (never overwrites).
env:
	./scripts/new_env.py .env .env.example

.env:
	@echo "no .env: make env (or cp .env.example .env, then set the secrets it marks REQUIRED)" >&2; exit 1

# The four worker images and the Dagster image (offline, from the local python:3.11-slim).
images: .env
	$(COMPOSE) --profile workers build heartbeat classifier registrar stager dagster_webserver

# Builds, starts the stack in order (migrations and bucket set-up first), waits until the UI answers
# through ui_proxy; names the failing step and prints its last log lines when one fails.
up: images
	COMPOSE="$(COMPOSE)" ./scripts/stack_up.sh

# Stops and removes the stack's containers; the data volumes stay (add V=-v to drop them too).
down:
	$(COMPOSE) down --remove-orphans $(V)

# Follows the logs of every service, or of one: make logs SERVICE=dagster_daemon
logs:
	$(COMPOSE) logs -f --tail=100 $(SERVICE)

# Any dagster CLI command inside the daemon's container, the one that launches worker containers and
# holds their credentials (the webserver holds none): make dagster-cli CMD="asset list -m orchestrator.definitions"
dagster-cli:
	$(COMPOSE) exec -T dagster_daemon dagster $(CMD)

# psql on the metadata DB: interactive, or one statement with SQL="select * from bootstrap_heartbeat"
psql:
	$(COMPOSE) exec $(if $(SQL),-T) metadata_postgres sh -c 'exec psql -U "$$POSTGRES_USER" -d "$$POSTGRES_DB" $(if $(SQL),-c "$(SQL)")'

# A shell in the object-store container with `mc` pointed at it as alias `local`: mc ls local/health-raw
minio-shell:
	$(COMPOSE) exec minio sh -c 'mc alias set local http://127.0.0.1:9000 "$$MINIO_ROOT_USER" "$$MINIO_ROOT_PASSWORD" >/dev/null && exec sh'
