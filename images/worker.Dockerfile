# syntax=docker/dockerfile:1
# The worker images: one shared runtime (a venv with the `workers` package) and one thin stage
# per worker, so the four images share every layer but their entrypoint. Build from the
# repository root, e.g.:
#   docker build -f images/worker.Dockerfile --target heartbeat -t health-intake-heartbeat .
# Works offline with --pull=never when python:3.11-slim is present locally
# (scripts/container_engine.sh builds a stand-in where no registry answers).
ARG PYTHON_IMAGE=python:3.11-slim

# --- build stage: compilers and pip stay here, only the venv moves on -----------------------
FROM ${PYTHON_IMAGE} AS build
# A venv, not the system site-packages: Debian's Python refuses global pip installs (PEP 668),
# and a self-contained /opt/venv is the one thing the runtime stage copies.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies before source: this layer is rebuilt only when the pins or the dependency list
# change, not on every code edit.
COPY constraints.txt ./
COPY workers/pyproject.toml workers/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('workers/pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install -c constraints.txt -r requirements.txt
# The package itself, without touching the dependencies resolved above.
COPY workers/ workers/
RUN pip install --no-deps ./workers

# --- runtime: the venv, the migrations, a non-root user; no pip, no build files -------------
FROM ${PYTHON_IMAGE} AS runtime
COPY --from=build /opt/venv /opt/venv
# Migrations ship with the workers so the one-shot `alembic upgrade head` needs no other image.
COPY alembic.ini /app/alembic.ini
COPY migrations/ /app/migrations/
# A worker needs no privileges: it talks to the DB and the object store over the network.
RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin worker
USER worker
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Built on its own, the shared stage is the operator's table viewer (`IMAGE bootstrap_heartbeat`);
# each worker stage below sets its own entrypoint.
ENTRYPOINT ["python", "-m", "workers.tables"]

# --- one stage per worker: `docker run IMAGE --help` explains its arguments -----------------
FROM runtime AS heartbeat
ENTRYPOINT ["python", "-m", "workers.heartbeat"]

# The classifier image also runs `python -m workers.layouts` (the layout registry sync): the
# launcher overrides the entrypoint for it.
FROM runtime AS classifier
ENTRYPOINT ["python", "-m", "workers.classifier"]

FROM runtime AS registrar
ENTRYPOINT ["python", "-m", "workers.registrar"]

FROM runtime AS stager
ENTRYPOINT ["python", "-m", "workers.stager"]
