# TEST SCAFFOLDING, not a production image: a stand-in for nginx:1.28.0-bookworm, built by
# scripts/container_engine.sh only where no registry answers. Debian's nginx on the local
# python:3.11-slim stand-in (Debian bookworm), laid out as the official image is where
# docker-compose.yml relies on it: a site in /etc/nginx/conf.d/, logs on stdout/stderr,
# `nginx -g 'daemon off;'` in the foreground, workers as an unprivileged user.
FROM python:3.11-slim
# scripts/container_engine.sh rebuilds what carries this label (a stand-in), never a pulled image.
LABEL health-intake.standin=1
RUN export DEBIAN_FRONTEND=noninteractive && apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx >/dev/null \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
