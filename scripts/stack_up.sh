#!/usr/bin/env bash
# `make up`: starts the stack, then waits until both UIs answer through ui_proxy's health
# endpoints (no credentials needed; they reveal nothing but "up"). When a one-shot step fails,
# or the UI never answers, it names the step or service and prints its last log lines.
#   COMPOSE  the compose command, with its options (default: docker-compose)
#   UP_TIMEOUT_SECONDS  how long to wait for the UI (default: 300)
set -uo pipefail
read -r -a COMPOSE <<< "${COMPOSE:-docker-compose}"
# Every service in docker-compose.yml with `restart: "no"` (tests/docker/test_compose_names.py).
ONE_SHOT_STEPS=(migrations db_roles minio_init events_init store_check roles_render roles_apply roles_check ui_auth_render)
TAIL_LINES=20

say() { echo "make up: $*" >&2; }

# The compose project's name: -p/--project-name in COMPOSE, else COMPOSE_PROJECT_NAME, else the
# directory's name as compose normalises it.
project_name() {
  local i
  for ((i = 0; i < ${#COMPOSE[@]}; i++)); do
    case "${COMPOSE[$i]}" in
      -p | --project-name) echo "${COMPOSE[$((i + 1))]:-}"; return ;;
      --project-name=*) echo "${COMPOSE[$i]#--project-name=}"; return ;;
    esac
  done
  if [ -n "${COMPOSE_PROJECT_NAME:-}" ]; then echo "$COMPOSE_PROJECT_NAME"; return; fi
  basename "$PWD" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_-'
}

# A service's container ids: as compose lists them, else by compose's labels (some
# engine and compose pairings list no container for a step that has exited).
containers_of() {
  local ids
  ids=$("${COMPOSE[@]}" ps -a -q "$1" 2>/dev/null)
  [ -n "$ids" ] || ids=$(docker ps -a -q --filter "label=com.docker.compose.project=$(project_name)" \
    --filter "label=com.docker.compose.service=$1" 2>/dev/null)
  echo "$ids"
}

# "<status> <exit code>" of a service's container, or nothing when it has none.
state_of() {
  local id
  id=$(containers_of "$1" | head -1)
  [ -n "$id" ] && docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$id" 2>/dev/null
}

# Services whose healthcheck has not passed (starting or unhealthy), one a line.
unhealthy_services() {
  local service id health
  for service in $("${COMPOSE[@]}" ps --services 2>/dev/null); do
    id=$("${COMPOSE[@]}" ps -q "$service" 2>/dev/null | head -1)
    [ -n "$id" ] || continue
    health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id" 2>/dev/null)
    case "$health" in starting | unhealthy) echo "$service $health" ;; esac
  done
}

report_unhealthy_services() {
  local service health
  while read -r service health; do
    say "service $service is $health"
    show_log "$service"
  done < <(unhealthy_services)
}

show_log() {
  say "last $TAIL_LINES log lines of $1:"
  "${COMPOSE[@]}" logs --no-color --tail="$TAIL_LINES" "$1" >&2
}

# Names every one-shot step that exited non-zero; true when there was one.
report_failed_steps() {
  local failed=1 step state
  for step in "${ONE_SHOT_STEPS[@]}"; do
    state=$(state_of "$step")
    if [ "${state%% *}" = exited ] && [ "${state##* }" != 0 ]; then
      say "step $step failed (exit code ${state##* })"
      show_log "$step"
      failed=0
    fi
  done
  return $failed
}

proxy_url() {
  local address
  address=$("${COMPOSE[@]}" port ui_proxy "$1" 2>/dev/null | tail -1)
  [ -n "$address" ] && echo "http://$address"
}

ui_answers() {
  local operator viewer
  operator=$(proxy_url 8080) && viewer=$(proxy_url 8081) || return 1
  curl -sf -o /dev/null --max-time 5 "$operator/healthz" && curl -sf -o /dev/null --max-time 5 "$viewer/healthz"
}

# Every container of the project with its state, so the one that failed is named in any case.
show_containers() {
  say "the stack's containers:"
  docker ps -a --filter "label=com.docker.compose.project=$(project_name)" \
    --format '{{.Names}}\t{{.Status}}' >&2
}

# Podman before 4.4 (Debian 12 has 4.3.1) can fail a container's start with "read /proc/N/cgroup:
# no such process" when a short-lived process exits while podman reads its cgroup (podman#16383,
# fixed by podman#16504). `up` converges whatever is left, so that failure, and only that one, gets
# a second `up`; any other failure is reported as it is.
ENGINE_RACE='read /proc/[0-9]+/cgroup: no such process'
compose_up() {
  local errors status
  errors=$(mktemp)
  { "${COMPOSE[@]}" up -d 2>&1 1>&3 | tee "$errors" >&2; } 3>&1
  status=${PIPESTATUS[0]}
  if [ "$status" != 0 ] && grep -Eq "$ENGINE_RACE" "$errors"; then
    say "the container engine lost a race reading a process's cgroup (a known podman 4.3 bug); running up again"
    "${COMPOSE[@]}" up -d
    status=$?
  fi
  rm -f "$errors"
  return "$status"
}

if ! compose_up; then
  if ! report_failed_steps; then
    report_unhealthy_services
    show_containers
  fi
  say "docker-compose up failed (its own error is above)"
  exit 1
fi
deadline=$((SECONDS + ${UP_TIMEOUT_SECONDS:-300}))
until ui_answers; do
  if report_failed_steps; then exit 1; fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "the UI did not answer through ui_proxy within ${UP_TIMEOUT_SECONDS:-300} s"
    report_unhealthy_services
    show_log ui_proxy
    exit 1
  fi
  sleep 2
done
echo "UI ready: operators at $(proxy_url 8080), viewers (read-only) at $(proxy_url 8081) (logins in .env)"
