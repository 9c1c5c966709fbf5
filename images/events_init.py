"""Docker mode's bucket-events set-up (docker-compose.yml `events_init`, a one-shot step in the
worker image, run after the bucket exists and NATS answers):

1. the event stream on NATS (workers.events.ensure_stream): MinIO's JetStream target publishes
   only into a stream that exists (until then it keeps events in its queue directory);
2. the bucket's notification: put and delete under INBOX_PREFIX to MinIO's NATS target
   (`PRIMARY`, configured by the MINIO_NOTIFY_NATS_* variables of the minio service).

SeaweedFS (the S3 stand-in) has no notification configuration: it reads `PUT ?notification` as a
bucket creation and refuses it (BucketAlreadyOwnedByYou, or BucketAlreadyExists where identities
are configured). A refusal from a server that names itself SeaweedFS is therefore said and the
step succeeds: the S3 stand-in publishes its events itself (images/standins/s3-entrypoint.sh runs
workers.bridge); the compose file's `seaweedfs` profile has no bridge, so it wants
DISCOVERY_MODE=listing. Any other refusal (MinIO without the NATS target: InvalidArgument) fails
the step.
"""

from __future__ import annotations

import sys

from botocore.exceptions import ClientError

from workers import events, store
from workers.settings import EventSettings, load_event_settings, load_intake_settings, load_settings

TARGET_ARN = "arn:minio:sqs::PRIMARY:nats"
NO_NOTIFICATION_API = "SeaweedFS"  # the Server header of a store without the notification API


def notification(inbox_prefix: str) -> dict:
    rule = {"Name": "prefix", "Value": inbox_prefix}
    queue = {"QueueArn": TARGET_ARN, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}
    return {"QueueConfigurations": [{**queue, "Filter": {"Key": {"FilterRules": [rule]}}}]}


async def create_stream(settings: EventSettings):
    nc = await events.connect(settings)
    try:
        return await events.ensure_stream(nc.jetstream(timeout=events.REQUEST_TIMEOUT_SECONDS), settings)
    finally:
        await nc.close()


def bind_inbox(s3, bucket: str, inbox_prefix: str) -> str:
    """What the store did with the inbox's notification, in one line."""
    try:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=notification(inbox_prefix))
    except ClientError as exc:
        server = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("server", "")
        if not server.startswith(NO_NOTIFICATION_API):
            raise
        return (
            f"{server} takes no bucket notification ({store.error_code(exc)}): its events come only from a"
            " workers.bridge following its filer (the S3 stand-in runs one)"
        )
    return f"bucket {bucket}: put and delete under {inbox_prefix} go to {TARGET_ARN}"


def main() -> int:
    event_settings, settings = load_event_settings(), load_settings()
    try:
        info = events.run(create_stream(event_settings))
    except events.EventsUnavailable as exc:
        print(f"events_init: {exc}", file=sys.stderr)
        return 1
    print(f"event stream {info.config.name} on {event_settings.nats_server}: subjects {info.config.subjects}")
    inbox_prefix = load_intake_settings().inbox_prefix
    print(bind_inbox(store.make_s3_client(settings), settings.bucket, inbox_prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
