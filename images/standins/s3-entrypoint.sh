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
exec weed mini -dir="$data" -ip.bind=0.0.0.0 -s3.port=9000 -s3.config="$config" -admin.ui=false \
  -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -master.telemetry=false
