#!/usr/bin/env bash
# Dev mode in one command: .venv, migrations on SQLite, an S3 endpoint, the bucket, NATS and the
# bucket-events bridge, and `dagster dev` on :3000. Re-running is safe; Ctrl-C stops everything
# this script started.
# Overrides: DAGSTER_PORT, METADATA_DB_URL, MINIO_ENDPOINT, MINIO_ACCESS_KEY, MINIO_SECRET_KEY, MINIO_BUCKET,
# NATS_URL, DISCOVERY_MODE.
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)

say() { echo "dev_up: $*"; }
die() { echo "dev_up: error: $*" >&2; exit 1; }
port_busy() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }
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
# Intake, events, recovery, retention and connection tuning (README's settings tables) is recorded
# only when set, so the defaults stay in one place (workers/settings.py; a test keeps this list whole).
for name in INBOX_PREFIX GROUP_BY_DEPTH MARKER_FILE QUIESCENCE_MINUTES ABANDONED_UPLOAD_HOURS RAW_PREFIX \
            STAGER_DELETE_INBOX CLASSIFIER_IMPL SENSOR_INTERVAL_SECONDS \
            EVENTS_STREAM EVENTS_SUBJECT EVENTS_RETENTION_HOURS RECONCILE_MINUTES \
            INTAKE_STEP_RETRIES INTAKE_STEP_RETRY_DELAY_SECONDS INTAKE_RUN_RETRIES SWEEP_INTERVAL_SECONDS \
            SWEEP_ROUNDS SWEEP_BACKOFF_SECONDS STAGING_GRACE_MINUTES STUCK_AFTER_MINUTES \
            RAW_RETENTION_MODE RAW_RETENTION_DAYS RAW_LEGAL_HOLD DB_CONNECT_ATTEMPTS DB_CONNECT_BACKOFF_SECONDS; do
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

s3_port=$(python -c 'import os, urllib.parse as u; print(u.urlsplit(os.environ["MINIO_ENDPOINT"]).port or 80)')
own_seaweedfs=0
if s3_answers "$MINIO_ENDPOINT"; then
  say "using the S3 endpoint already answering at $MINIO_ENDPOINT"
else
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
    own_seaweedfs=1
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

# Bucket events (README "Bucket events in dev mode"): NATS with JetStream, by default on the port
# after the S3 server's internals (S3 port + 10009); a server already answering at NATS_URL is used.
NATS_URL=${NATS_URL:-nats://127.0.0.1:$((s3_port + 10009))}
read -r nats_host nats_port < <(NATS_URL=$NATS_URL python -c \
  'import os, urllib.parse as u; p = u.urlsplit(os.environ["NATS_URL"]); print(p.hostname, p.port or 4222)')
if port_busy "$nats_port" "$nats_host"; then
  say "using the NATS server already answering at $nats_host:$nats_port"
else
  case "$nats_host" in
    127.0.0.1|localhost) ;;
    *) die "nothing answers at NATS_URL ($nats_host:$nats_port), and it is not local, so no server can be started for it" ;;
  esac
  say "starting NATS (JetStream) on :$nats_port (data in .local/nats, log .local/nats.log)"
  start_group .local/nats.log "$root/.venv/bin/nats-server" -js -a 127.0.0.1 -p "$nats_port" -sd "$root/.local/nats"
  for _ in $(seq 1 60); do port_busy "$nats_port" && break; sleep 0.5; done
  port_busy "$nats_port" || { tail -n 5 .local/nats.log >&2; die "NATS did not start on :$nats_port; see .local/nats.log"; }
fi
# Events need a producer: the bridge for the SeaweedFS started here; another store must publish its
# own notifications to this stream (MinIO's NATS target, as in Docker mode).
if [ "$own_seaweedfs" = 1 ]; then
  say "starting the bucket-events bridge (SeaweedFS filer log -> NATS; log .local/bridge.log)"
  subscriptions() { { grep -s "bridge: subscribed" .local/bridge.log || true; } | wc -l; }
  before=$(subscriptions)
  SEAWEEDFS_FILER_GRPC=127.0.0.1:$((${S3_INTERNAL_PORT_BASE:-$((s3_port + 10000))} + 6)) NATS_URL=$NATS_URL \
    start_group .local/bridge.log python -m workers.bridge
  for _ in $(seq 1 60); do
    [ "$(subscriptions)" -gt "$before" ] && break
    sleep 0.5
  done
  [ "$(subscriptions)" -gt "$before" ] || say "warning: the bridge has not subscribed yet (it keeps trying); see .local/bridge.log"
  DISCOVERY_MODE=${DISCOVERY_MODE:-events}
else
  say "no bridge: events mode needs $MINIO_ENDPOINT's own bucket notifications into NATS (README \"Bucket events in dev mode\")"
  DISCOVERY_MODE=${DISCOVERY_MODE:-listing}
fi
printf 'export NATS_URL=%q\nexport DISCOVERY_MODE=%q\n' "$NATS_URL" "$DISCOVERY_MODE" >> .local/dev.env
export NATS_URL DISCOVERY_MODE
say "inbox discovery: DISCOVERY_MODE=$DISCOVERY_MODE"

say "starting dagster dev on http://127.0.0.1:$DAGSTER_PORT (log .local/dagster.log)"
start_group .local/dagster.log dagster dev -w workspace.yaml -h 127.0.0.1 -p "$DAGSTER_PORT"
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$DAGSTER_PORT/server_info" >/dev/null && break
  kill -0 "${started[-1]}" 2>/dev/null || die "dagster dev exited; see .local/dagster.log"
  sleep 1
done
say "UI ready at http://127.0.0.1:$DAGSTER_PORT  (Ctrl-C stops it; in another shell: source .local/dev.env)"
wait
