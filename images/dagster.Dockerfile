# syntax=docker/dockerfile:1
# The Dagster image: webserver, daemon and the health_intake code location (the orchestrator
# package, with the workers package it imports for names and settings). The workers' own
# images run the work; this one only launches them. Build from the repository root:
#   docker build -f images/dagster.Dockerfile -t health-intake-dagster .
ARG PYTHON_IMAGE=python:3.11-slim

# --- build stage: pip and the build files stay here, only the venv moves on ----------------
FROM ${PYTHON_IMAGE} AS build
# A venv, not the system site-packages: Debian's Python refuses global pip installs (PEP 668).
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies before source, so a code edit does not reinstall Dagster. Our own two packages
# are left out of this list: they are installed from source below.
COPY constraints.txt ./
COPY workers/pyproject.toml workers/
COPY orchestrator/pyproject.toml orchestrator/
RUN python -c "import tomllib; deps = [d for p in ('workers', 'orchestrator') for d in tomllib.load(open(p + '/pyproject.toml', 'rb'))['project']['dependencies'] if not d.startswith('health-')]; print('\n'.join(deps))" > requirements.txt \
 && pip install -c constraints.txt -r requirements.txt
COPY workers/ workers/
COPY orchestrator/ orchestrator/
RUN pip install --no-deps ./workers ./orchestrator

# --- runtime --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
COPY --from=build /opt/venv /opt/venv
# The instance config (run storage on dagster_postgres) and the workspace the webserver and
# the daemon both load, so they agree on the code location's name.
COPY images/dagster.yaml /opt/dagster/home/dagster.yaml
COPY workspace.yaml /app/workspace.yaml
# Non-root by default. docker-compose.yml runs the webserver and the daemon as root only
# because the engine socket they launch workers through is root-only.
RUN useradd --system --uid 10002 --user-group --home-dir /opt/dagster/home --shell /usr/sbin/nologin dagster \
 && mkdir -p /opt/dagster/home/storage && chown -R dagster:dagster /opt/dagster/home
USER dagster
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH DAGSTER_HOME=/opt/dagster/home PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 3000
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/app/workspace.yaml"]
