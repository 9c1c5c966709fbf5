#!/usr/bin/env bash
# Dev mode in one command: .venv, migrations on SQLite, an S3 endpoint, the bucket, and
# `dagster dev` on :3000. Re-running is safe; Ctrl-C stops everything this script started.
# Overrides: DAGSTER_PORT, METADATA_DB_URL, MINIO_ENDPOINT, MINIO_ACCESS_KEY, MINIO_SECRET_KEY, MINIO_BUCKET.
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)

say() { echo "dev_up: $*"; }
die() { echo "dev_up: error: $*" >&2; exit 1; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
s3_answers() { curl -s -o /dev/null --max-time 2 "$1"; }

DAGSTER_PORT=${DAGSTER_PORT:-3000}
port_busy "$DAGSTER_PORT" && die "port $DAGSTER_PORT is busy (another dagster dev?). Stop it, or run DAGSTER_PORT=3001 ./dev_up.sh"

scripts/install.sh
# .local holds the dev keys (dev.env), the metadata DB and the S3 data: PHI once partners' files
# arrive. Private to this user, also when an earlier run created it with looser modes.
mkdir -p .local .dagster_home
chmod 700 .local
cp orchestrator/dagster.dev.yaml .dagster_home/dagster.yaml  # run monitoring and retries (docs/reliability.md)

# The environment every dev shell shares; the README's "in another shell" step sources it.
umask 077
cat > .local/dev.env <<ENV
export PATH="$root/.venv/bin:\$PATH"
export DAGSTER_HOME="$root/.dagster_home"
export METADATA_DB_URL="${METADATA_DB_URL:-sqlite:///$root/.local/metadata.db}"
export MINIO_ENDPOINT="${MINIO_ENDPOINT:-http://127.0.0.1:9000}"
export MINIO_ACCESS_KEY="${MINIO_ACCESS_KEY:-minioadmin}"
export MINIO_SECRET_KEY="${MINIO_SECRET_KEY:-minioadmin}"
export MINIO_BUCKET="${MINIO_BUCKET:-health-raw}"
export WORKER_LAUNCH_MODE=subprocess
# For awscli: the same endpoint and credentials.
export AWS_ENDPOINT_URL="\$MINIO_ENDPOINT"
export AWS_ACCESS_KEY_ID="\$MINIO_ACCESS_KEY"
export AWS_SECRET_ACCESS_KEY="\$MINIO_SECRET_KEY"
export AWS_DEFAULT_REGION=us-east-1
ENV
# Intake and recovery tuning (README "Intake settings", "Recovery settings") is recorded only when set, so the defaults stay in one place.
for name in INBOX_PREFIX GROUP_BY_DEPTH MARKER_FILE QUIESCENCE_MINUTES ABANDONED_UPLOAD_HOURS RAW_PREFIX \
            STAGER_DELETE_INBOX CLASSIFIER_IMPL SENSOR_INTERVAL_SECONDS \
            INTAKE_STEP_RETRIES INTAKE_STEP_RETRY_DELAY_SECONDS INTAKE_RUN_RETRIES SWEEP_INTERVAL_SECONDS \
            SWEEP_ROUNDS SWEEP_BACKOFF_SECONDS STAGING_GRACE_MINUTES STUCK_AFTER_MINUTES; do
  if [ -n "${!name:-}" ]; then printf 'export %s=%q\n' "$name" "${!name}" >> .local/dev.env; fi
done
chmod 600 .local/dev.env
umask 022
# shellcheck source=/dev/null
source .local/dev.env
say "environment written to .local/dev.env"

started=()
stop_all() {
  # A second Ctrl-C must not abandon the children half-stopped; the KILL below bounds the wait.
  trap '' INT TERM
  trap - EXIT
  for pid in "${started[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    alive=0
    for pid in "${started[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  # dagster dev's processes can linger well past a TERM; whatever is left after 15 s is killed.
  for pid in "${started[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  [ "${#started[@]}" = 0 ] || say "stopped"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Each child runs in its own session (setsid), so stopping its process group stops its children too.
start_group() { local log=$1; shift; setsid "$@" >>"$log" 2>&1 < /dev/null & started+=("$!"); }

say "migrating the metadata DB"
alembic upgrade head
# Through Dagster, so the catalog shows sync_layout_registry materialized with what it synced.
say "syncing the layout registry: dagster asset materialize --select sync_layout_registry (log .local/layout_sync.log)"
if ! dagster asset materialize -m orchestrator.definitions --select sync_layout_registry >.local/layout_sync.log 2>&1; then
  tail -n 5 .local/layout_sync.log >&2
  die "the layout sync failed; see .local/layout_sync.log"
fi

if s3_answers "$MINIO_ENDPOINT"; then
  say "using the S3 endpoint already answering at $MINIO_ENDPOINT"
else
  s3_port=$(python -c 'import os, urllib.parse as u; print(u.urlsplit(os.environ["MINIO_ENDPOINT"]).port or 80)')
  case "$MINIO_ENDPOINT" in
    http://127.0.0.1:*|http://localhost:*) ;;
    *) die "nothing answers at MINIO_ENDPOINT=$MINIO_ENDPOINT, and it is not local, so no server can be started for it" ;;
  esac
  if command -v minio >/dev/null; then
    say "starting minio server on :$s3_port (data in .local/minio)"
    MINIO_ROOT_USER=$MINIO_ACCESS_KEY MINIO_ROOT_PASSWORD=$MINIO_SECRET_KEY \
      start_group .local/s3.log minio server .local/minio --address "127.0.0.1:$s3_port"
  else
    say "starting the embedded S3 server (SeaweedFS) on :$s3_port (data in .local/s3, log .local/s3.log)"
    start_group .local/s3.log scripts/s3_server.sh .local/s3 "$s3_port"
  fi
  for _ in $(seq 1 120); do s3_answers "$MINIO_ENDPOINT" && break; sleep 1; done
  if ! s3_answers "$MINIO_ENDPOINT"; then
    tail -n 5 .local/s3.log >&2
    die "the S3 server did not answer at $MINIO_ENDPOINT within 120 s; see .local/s3.log"
  fi
fi
# The bucket with Object Lock on; the command waits while the S3 gateway is still starting, and
# refuses an existing bucket without Object Lock, printing the one-time migration.
python -m workers.store ensure-bucket --wait 30 || die "bucket $MINIO_BUCKET is not usable at $MINIO_ENDPOINT (above)"
# The behaviours the platform relies on (Object Lock, conditional requests), proved on this store.
if ! check=$(python -m workers.store check 2>&1); then
  echo "$check" >&2
  die "the object store at $MINIO_ENDPOINT failed the store check (BAD lines above)"
fi
say "store check passed (object lock, conditional requests, version deletes)"

say "starting dagster dev on http://127.0.0.1:$DAGSTER_PORT (log .local/dagster.log)"
start_group .local/dagster.log dagster dev -w workspace.yaml -h 127.0.0.1 -p "$DAGSTER_PORT"
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$DAGSTER_PORT/server_info" >/dev/null && break
  kill -0 "${started[-1]}" 2>/dev/null || die "dagster dev exited; see .local/dagster.log"
  sleep 1
done
say "UI ready at http://127.0.0.1:$DAGSTER_PORT  (Ctrl-C stops it; in another shell: source .local/dev.env)"
wait
