#!/bin/sh
# TEST SCAFFOLDING: `server DIR [--console-address ...]` as MinIO takes it, served by SeaweedFS.
set -eu
[ "${1:-}" = server ] || exec "$@"
data=${2:-/data}
mkdir -p "$data"
# The roles rendered by `python -m workers.roles render` (compose's s3_roles volume), which hold
# the root identity too; without them, the root keys alone.
config=/roles/identities.json
if [ ! -f "$config" ]; then
  config=/tmp/s3.json
  cat > "$config" <<JSON
{"identities": [{"name": "platform",
  "credentials": [{"accessKey": "${MINIO_ROOT_USER:?}", "secretKey": "${MINIO_ROOT_PASSWORD:?}"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
fi
# MinIO's NATS target, which SeaweedFS lacks: workers.bridge follows the filer's metadata log
# (its gRPC port: the filer's 8888 + 10000) and publishes the inbox's put and delete events to
# the address and subject MinIO would. Restarted while it fails (NATS not up yet, for one).
if [ "${MINIO_NOTIFY_NATS_ENABLE_PRIMARY:-off}" = on ]; then
  (
    export SEAWEEDFS_FILER_GRPC=127.0.0.1:18888 MINIO_ENDPOINT=http://127.0.0.1:9000 \
      MINIO_ACCESS_KEY="$MINIO_ROOT_USER" MINIO_SECRET_KEY="$MINIO_ROOT_PASSWORD" \
      NATS_URL="nats://${MINIO_NOTIFY_NATS_ADDRESS_PRIMARY:?}" EVENTS_SUBJECT="${MINIO_NOTIFY_NATS_SUBJECT_PRIMARY:?}"
    while :; do
      /opt/bridge/bin/python -m workers.bridge || echo "s3 stand-in: workers.bridge exited ($?); again in 5 s" >&2
      sleep 5
    done
  ) &
fi
exec weed mini -dir="$data" -ip.bind=0.0.0.0 -s3.port=9000 -s3.config="$config" -admin.ui=false \
  -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -master.telemetry=false
