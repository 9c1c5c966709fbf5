"""The object store, through boto3's S3 API only, so MinIO, SeaweedFS or AWS S3 all serve."""

from __future__ import annotations

import argparse
import hashlib
import sys
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from workers.settings import Settings, load_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # a boto3 S3 client's type, for the type checker only (dev)
else:
    S3Client = object

# Bounded retries: a brief outage is ridden out, a dead endpoint fails within seconds.
CLIENT_CONFIG = Config(
    retries={"max_attempts": 3, "mode": "standard"},
    connect_timeout=5,
    read_timeout=60,
    s3={"addressing_style": "path"},
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)


NOT_FOUND = ("404", "NoSuchKey", "NotFound")
# 412 is the standard answer to a failed condition; some MinIO releases answered a conditional
# PUT with 304 instead (minio/minio#19442).
PRECONDITION_FAILED = ("412", "PreconditionFailed", "304", "NotModified")
READ_CHUNK = 1024 * 1024


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def bare(etag: str) -> str:
    return etag.strip('"')


def quoted(etag: str) -> str:
    return f'"{bare(etag)}"'


def sha256_of(s3: S3Client, bucket: str, key: str, etag: str | None = None) -> str:
    """Hex SHA-256 of an object, streamed in chunks so a large file never sits in memory.

    With `etag`, only that version is read (If-Match): a file replaced meanwhile is refused.
    """
    if etag:
        body = s3.get_object(Bucket=bucket, Key=key, IfMatch=quoted(etag))["Body"]
    else:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in body.iter_chunks(READ_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def make_s3_client(settings: Settings):
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.region,
        config=CLIENT_CONFIG,
    )


def ensure_bucket(s3: S3Client, bucket: str) -> bool:
    """Create the bucket unless it exists; True when it was created."""
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if error_code(exc) not in (*NOT_FOUND, "NoSuchBucket"):
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
