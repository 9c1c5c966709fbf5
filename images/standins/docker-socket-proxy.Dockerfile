# TEST SCAFFOLDING, not a production image: a stand-in for tecnativa/docker-socket-proxy, built
# by scripts/container_engine.sh only where no registry answers. Debian's HAProxy on the local
# python:3.11-slim stand-in (Debian bookworm), with that image's port (2375), socket path and
# environment variables (images/standins/docker-socket-proxy.cfg); like it, every API area is
# refused unless its variable says 1.
FROM python:3.11-slim
# scripts/container_engine.sh rebuilds what carries this label (a stand-in), never a pulled image.
LABEL health-intake.standin=1
RUN export DEBIAN_FRONTEND=noninteractive && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends haproxy >/dev/null && rm -rf /var/lib/apt/lists/*
COPY images/standins/docker-socket-proxy.cfg /usr/local/etc/haproxy/haproxy.cfg
ENV SOCKET_PATH=/var/run/docker.sock POST=0 DELETE=0 CONTAINERS=0 IMAGES=0 NETWORKS=0 VOLUMES=0 \
    EXEC=0 BUILD=0 INFO=0 SYSTEM=0 EVENTS=1 PING=1 VERSION=1 ALLOW_START=0 ALLOW_STOP=0 \
    ALLOW_EXEC=0 ALLOW_ATTACH=0 ALLOW_ARCHIVE=0 ALLOW_EXPORT=0 ALLOW_LOGS=0
EXPOSE 2375
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
