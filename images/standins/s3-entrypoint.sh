#!/bin/sh
# TEST SCAFFOLDING: `server DIR [--console-address ...]` as MinIO takes it, served by SeaweedFS.
set -eu
[ "${1:-}" = server ] || exec "$@"
data=${2:-/data}
mkdir -p "$data"
cat > /tmp/s3.json <<JSON
{"identities": [{"name": "platform",
  "credentials": [{"accessKey": "${MINIO_ROOT_USER:?}", "secretKey": "${MINIO_ROOT_PASSWORD:?}"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
exec weed mini -dir="$data" -ip.bind=0.0.0.0 -s3.port=9000 -s3.config=/tmp/s3.json -admin.ui=false \
  -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -master.telemetry=false
