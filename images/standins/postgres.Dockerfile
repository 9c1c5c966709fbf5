# TEST SCAFFOLDING, not a production image: a stand-in for postgres:15.14-bookworm, built by
# scripts/container_engine.sh only where no registry answers. Debian's PostgreSQL 15 on the
# local python:3.11-slim stand-in (Debian bookworm), honouring the official image's
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB and its data directory.
FROM python:3.11-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY images/standins/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
