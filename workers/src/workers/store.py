"""The object store, through boto3's S3 API only, so MinIO, SeaweedFS or AWS S3 all serve."""

from __future__ import annotations

import argparse
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from workers.settings import Settings, load_settings

# Bounded retries: a brief outage is ridden out, a dead endpoint fails within seconds.
CLIENT_CONFIG = Config(
    retries={"max_attempts": 3, "mode": "standard"},
    connect_timeout=5,
    read_timeout=60,
    s3={"addressing_style": "path"},
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)


def make_s3_client(settings: Settings):
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.region,
        config=CLIENT_CONFIG,
    )


def ensure_bucket(s3, bucket: str) -> bool:
    """Create the bucket unless it exists; True when it was created."""
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    s3.create_bucket(Bucket=bucket)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.store",
        description="Object-store chores for operators and dev_up.sh. Connection from MINIO_* variables.",
    )
    parser.add_argument("command", choices=["ensure-bucket"])
    parser.parse_args(argv)
    settings = load_settings()
    created = ensure_bucket(make_s3_client(settings), settings.bucket)
    print(f"bucket {settings.bucket} {'created' if created else 'exists'} at {settings.endpoint_host}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
