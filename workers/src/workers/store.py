"""The object store, through boto3's S3 API only, so MinIO, SeaweedFS or AWS S3 all serve.

Operator commands (`python -m workers.store`, root keys from the MINIO_* variables):
- `ensure-bucket`: creates MINIO_BUCKET with Object Lock on, or checks that the existing one has it.
- `check`: proves, on the store in use, every behaviour of it the platform relies on.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from workers.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # a boto3 S3 client's type, for the type checker only (dev)
    from mypy_boto3_s3.type_defs import CopySourceTypeDef
else:
    S3Client = CopySourceTypeDef = object

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


T = TypeVar("T")
WAIT_SECONDS = 60.0
CHECK_PREFIX = "_store-check/"
# A run older than this was killed before it cleaned up: the next check removes what it left.
STALE_RUN = timedelta(hours=1)
RUN_STAMP = "%Y%m%dT%H%M%SZ"
REFUSED = ("AccessDenied", "403")
KEYS_REFUSED = ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
WRONG_ETAG = quoted("0" * 32)


class StoreError(RuntimeError):
    """The store, or the bucket in it, cannot serve the platform as it is; the message says what to do."""


class StoreUnreachable(StoreError):
    """No answer from the store within the wait."""


# --- The bucket: Object Lock on from its creation --------------------------------------------------


def ensure_bucket(s3: S3Client, bucket: str) -> bool:
    """Creates the bucket with Object Lock on (so versioning too); True when it was created.

    An existing bucket must have Object Lock already: S3 turns it on only at creation, and it is
    never converted (or versioned) behind the operator's back, so a bucket without it is refused
    with the one-time migration. No default retention: the workers set one per raw object, and a
    bucket default would lock the inbox's objects too.
    """
    created = not bucket_exists(s3, bucket)
    if created:
        try:
            s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        except ClientError as exc:
            if error_code(exc) != "BucketAlreadyOwnedByYou":
                raise
            created = False  # a concurrent set-up made it meanwhile
    if object_lock_configuration(s3, bucket).get("ObjectLockEnabled") != "Enabled":
        raise StoreError(
            f"bucket {bucket} was created, but the store did not turn Object Lock on: it does not support it"
            if created
            else unlocked_bucket_message(bucket)
        )
    return created


def bucket_exists(s3: S3Client, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except ClientError as exc:
        if error_code(exc) not in (*NOT_FOUND, "NoSuchBucket"):
            raise
    return False


def object_lock_configuration(s3: S3Client, bucket: str) -> dict:
    """The bucket's ObjectLockConfiguration; empty when it has none."""
    try:
        return dict(s3.get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration", {}))
    except ClientError as exc:
        if error_code(exc) != "ObjectLockConfigurationNotFoundError":
            raise
    return {}


def unlocked_bucket_message(bucket: str) -> str:
    new = f"{bucket[:56]}-locked"
    return (
        f"bucket {bucket} exists without Object Lock, so nothing in the store keeps its raw zone write-once. "
        "S3 turns Object Lock on only when a bucket is created, and this command never converts or downgrades "
        "a bucket silently. One-time migration, with the root keys (MINIO_* as for this command):\n"
        f"  1. a new bucket, locked:  MINIO_BUCKET={new} python -m workers.store ensure-bucket\n"
        f"  2. copy every object:     aws s3 sync s3://{bucket} s3://{new}  (AWS_ENDPOINT_URL=$MINIO_ENDPOINT;"
        f" or: mc mirror local/{bucket} local/{new})\n"
        f"  3. switch:                MINIO_BUCKET={new} where the platform reads it (.env for Docker mode,"
        " the environment of ./dev_up.sh), then restart it\n"
        "  4. lock and record the copies of what was staged before (only those still holding their\n"
        "     registered bytes; the rest are listed by file id): python -m workers.stager --adopt-unrecorded\n"
        "  5. audit the copy:        python -m workers.audit\n"
        f"Keep {bucket} until the audit is clean."
    )


def when_store_answers(call: Callable[[], T], endpoint_host: str, wait: float = WAIT_SECONDS) -> T:
    """call(), retried while the store cannot be reached or answers 5xx (it may be starting), up to
    `wait` seconds; any other answer, a refusal included, is final."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return call()
        except (BotoConnectionError, HTTPClientError) as exc:
            problem = type(exc).__name__
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) < 500:
                raise
            problem = error_code(exc)
        if time.monotonic() >= deadline:
            raise StoreUnreachable(
                f"no answer from the object store at {endpoint_host} (MINIO_ENDPOINT) within {wait:g} s ({problem})"
            )
        time.sleep(2)


# --- The start-up check: what the platform relies on, proved on the store in use -----------------


class Misbehaves(Exception):
    """A probe's finding: what the store did instead of what the platform relies on."""


class Unsupported(Exception):
    """The store does not offer the behaviour at all."""


@dataclass(frozen=True)
class Probe:
    name: str
    run: Callable[[Scratch], None]  # raises Misbehaves (or Unsupported) unless the store behaves
    required: bool = True


@dataclass(frozen=True)
class Made:
    """A version the check wrote."""

    etag: str
    version_id: str | None

    @property
    def version(self) -> str:
        if not self.version_id:
            raise Misbehaves("a PUT returned no VersionId: the bucket keeps no versions")
        return self.version_id


@dataclass(frozen=True)
class Outcome:
    probe: str
    status: Literal["ok", "BAD", "warn"]  # warn: a probe the platform does not rely on failed
    reason: str = ""

    def line(self) -> str:
        return f"{self.status:<4} {self.probe}" + (f": {self.reason}" if self.reason else "")


class Scratch:
    """The check's own objects, under `_store-check/<run>/`: a run id of their own (its start time
    and a random part), so runs never touch each other's objects, nor a killed run's leftovers."""

    def __init__(self, s3: S3Client, bucket: str, run: str | None = None):
        self.s3, self.bucket = s3, bucket
        self.run = run or f"{datetime.now(UTC):{RUN_STAMP}}-{secrets.token_hex(4)}"
        self.prefix = f"{CHECK_PREFIX}{self.run}/"

    def key(self, name: str) -> str:
        return self.prefix + name

    def put(self, name: str, body: bytes, **extra) -> Made:
        made = self.s3.put_object(Bucket=self.bucket, Key=self.key(name), Body=body, **extra)
        return Made(made["ETag"], made.get("VersionId"))

    def put_locked(self, name: str, body: bytes) -> Made:
        """GOVERNANCE for a day: the check's own clean-up may bypass it, nothing else may."""
        until = datetime.now(UTC) + timedelta(days=1)
        return self.put(name, body, ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until)

    def versions(self, name: str) -> tuple[list[str], list[str]]:
        """The VersionIds of the key's versions and of its delete markers."""
        listed = self.s3.list_object_versions(Bucket=self.bucket, Prefix=self.key(name))
        key = self.key(name)
        return (
            [v["VersionId"] for v in listed.get("Versions", ()) if v["Key"] == key],
            [m["VersionId"] for m in listed.get("DeleteMarkers", ()) if m["Key"] == key],
        )

    def remove(self) -> None:
        remove_versions(self.s3, self.bucket, self.prefix)


def remove_versions(s3: S3Client, bucket: str, prefix: str) -> None:
    """Every version and delete marker under the prefix, retention bypassed and legal holds lifted."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for entry in (*page.get("Versions", ()), *page.get("DeleteMarkers", ())):
            delete_version(s3, bucket, entry["Key"], entry["VersionId"])


def delete_version(s3: S3Client, bucket: str, key: str, version_id: str) -> None:
    def delete() -> None:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version_id, BypassGovernanceRetention=True)

    try:
        delete()
    except ClientError as exc:
        if error_code(exc) not in REFUSED:
            raise
        # A legal hold outlives the bypass (a run killed before it lifted its own).
        s3.put_object_legal_hold(Bucket=bucket, Key=key, VersionId=version_id, LegalHold={"Status": "OFF"})
        delete()


def remove_stale_runs(s3: S3Client, bucket: str, now: datetime) -> None:
    """What killed runs left, best effort: it never fails a check (a run's own prefix keeps it apart)."""
    try:
        listed = s3.list_object_versions(Bucket=bucket, Prefix=CHECK_PREFIX, Delimiter="/")
        for common in listed.get("CommonPrefixes", ()):
            run = common["Prefix"].removeprefix(CHECK_PREFIX).split("-")[0].rstrip("/")
            try:
                started = datetime.strptime(run, RUN_STAMP).replace(tzinfo=UTC)
            except ValueError:
                continue
            if now - started > STALE_RUN:
                remove_versions(s3, bucket, common["Prefix"])
    except ClientError:
        pass


def refused(call: Callable[[], object], codes: tuple[str, ...]) -> bool:
    """True when the store answers the call with one of `codes`, False when it does the call."""
    try:
        call()
    except ClientError as exc:
        if error_code(exc) in codes:
            return True
        raise
    return False


def probe_object_lock(scratch: Scratch) -> None:
    s3, bucket = scratch.s3, scratch.bucket
    config = object_lock_configuration(s3, bucket)
    if config.get("ObjectLockEnabled") != "Enabled":
        raise Misbehaves(f"bucket {bucket} has no Object Lock (python -m workers.store ensure-bucket: the migration)")
    default = config.get("Rule", {}).get("DefaultRetention")
    if default:
        raise Misbehaves(f"bucket {bucket} has a default retention ({default}): it would lock inbox objects too")
    versioning = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    if versioning != "Enabled":
        raise Misbehaves(f"versioning is {versioning or 'off'} on bucket {bucket}")


def probe_put_if_none_match(scratch: Scratch) -> None:
    scratch.put("create-only", b"first\n")
    if not refused(lambda: scratch.put("create-only", b"second\n", IfNoneMatch="*"), PRECONDITION_FAILED):
        raise Misbehaves("a PUT with If-None-Match: * over an existing key was accepted")


def probe_copy_source_if_match(scratch: Scratch) -> None:
    s3, bucket = scratch.s3, scratch.bucket
    source = scratch.put("copy-source", b"copied\n")

    def copy(to: str, etag: str) -> None:
        source_ref: CopySourceTypeDef = {"Bucket": bucket, "Key": scratch.key("copy-source")}
        s3.copy_object(Bucket=bucket, Key=scratch.key(to), CopySource=source_ref, CopySourceIfMatch=etag)

    if not refused(lambda: copy("copy-wrong", WRONG_ETAG), PRECONDITION_FAILED):
        raise Misbehaves("a CopyObject with a wrong CopySourceIfMatch ETag was made")
    copy("copy-right", source.etag)


def probe_delete_version_id(scratch: Scratch) -> None:
    first, second = scratch.put("versions", b"one\n").version, scratch.put("versions", b"two\n").version
    scratch.s3.delete_object(Bucket=scratch.bucket, Key=scratch.key("versions"), VersionId=first)
    versions, markers = scratch.versions("versions")
    if versions != [second] or markers:
        left = f"{len(versions)} version(s) and {len(markers)} delete marker(s)"
        raise Misbehaves(f"deleting one of 2 versions by its VersionId left {left}, not the other version alone")


def probe_delete_if_match(scratch: Scratch) -> None:
    s3, bucket, key = scratch.s3, scratch.bucket, scratch.key("delete-if-match")
    made = scratch.put("delete-if-match", b"conditional\n")
    try:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=made.version, IfMatch=WRONG_ETAG)
    except ClientError as exc:
        if error_code(exc) not in PRECONDITION_FAILED:
            raise Unsupported(f"DeleteObject with If-Match answered {error_code(exc)}") from None
        s3.delete_object(Bucket=bucket, Key=key, VersionId=made.version, IfMatch=made.etag)
        return
    raise Unsupported("a DeleteObject with a wrong If-Match ETag deleted the version (the condition is ignored)")


def probe_retention_refuses_delete(scratch: Scratch) -> None:
    s3, bucket, key = scratch.s3, scratch.bucket, scratch.key("retained")
    locked = scratch.put_locked("retained", b"retained\n").version
    if not refused(lambda: s3.delete_object(Bucket=bucket, Key=key, VersionId=locked), REFUSED):
        raise Misbehaves("a DELETE removed a version under a GOVERNANCE retention")


def probe_overwrite_keeps_locked_version(scratch: Scratch) -> None:
    s3, bucket, key = scratch.s3, scratch.bucket, scratch.key("overwritten")
    locked = scratch.put_locked("overwritten", b"original\n").version
    scratch.put("overwritten", b"replacement\n")
    if s3.get_object(Bucket=bucket, Key=key, VersionId=locked)["Body"].read() != b"original\n":
        raise Misbehaves("the locked version's bytes changed after an overwrite")


def probe_legal_hold_refuses_delete(scratch: Scratch) -> None:
    s3, bucket, key = scratch.s3, scratch.bucket, scratch.key("held")
    held = scratch.put("held", b"held\n").version
    s3.put_object_legal_hold(Bucket=bucket, Key=key, VersionId=held, LegalHold={"Status": "ON"})
    if not refused(lambda: s3.delete_object(Bucket=bucket, Key=key, VersionId=held), REFUSED):
        raise Misbehaves("a DELETE removed a version under legal hold")
    s3.put_object_legal_hold(Bucket=bucket, Key=key, VersionId=held, LegalHold={"Status": "OFF"})


PROBES = (
    Probe("bucket-object-lock", probe_object_lock),
    Probe("put-if-none-match", probe_put_if_none_match),
    Probe("copy-source-if-match", probe_copy_source_if_match),
    # How the stager removes what it staged from the inbox: exactly that version, no marker left.
    Probe("delete-version-id", probe_delete_version_id),
    # Not relied on (the stager deletes by VersionId): reported, never fails the check.
    Probe("delete-if-match", probe_delete_if_match, required=False),
    Probe("retention-refuses-delete", probe_retention_refuses_delete),
    Probe("overwrite-keeps-locked-version", probe_overwrite_keeps_locked_version),
    Probe("legal-hold-refuses-delete", probe_legal_hold_refuses_delete),
)


def run_probe(probe: Probe, scratch: Scratch) -> Outcome:
    failed: Literal["BAD", "warn"] = "BAD" if probe.required else "warn"
    try:
        probe.run(scratch)
    except Misbehaves as exc:
        return Outcome(probe.name, failed, str(exc))
    except Unsupported as exc:
        return Outcome(probe.name, failed, f"unsupported: {exc}")
    except ClientError as exc:
        return Outcome(probe.name, failed, f"{exc.operation_name} answered {error_code(exc)}")
    return Outcome(probe.name, "ok")


def run_probes(scratch: Scratch) -> list[Outcome]:
    """Every probe on the scratch's objects, which stay (check() removes them)."""
    return [run_probe(probe, scratch) for probe in PROBES]


def check(s3: S3Client, bucket: str) -> list[Outcome]:
    """Every probe, then the removal of every version and delete marker they made."""
    remove_stale_runs(s3, bucket, datetime.now(UTC))
    scratch = Scratch(s3, bucket)
    try:
        outcomes = run_probes(scratch)
    finally:
        cleaned = clean_up(scratch)
    return [*outcomes, cleaned]


def clean_up(scratch: Scratch) -> Outcome:
    """A leftover harms no later run (each has its own prefix), so failing to remove one only warns."""
    try:
        scratch.remove()
    except ClientError as exc:
        reason = f"{exc.operation_name} answered {error_code(exc)}; {scratch.prefix} stays until a later check"
        return Outcome("clean-up", "warn", reason)
    return Outcome("clean-up", "ok")


# --- Command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.store", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, summary in (
        ("ensure-bucket", "create MINIO_BUCKET with Object Lock on, or check the existing one has it"),
        ("check", "prove the store's behaviours the platform relies on (exit 1 names a failing one)"),
    ):
        command = commands.add_parser(name, help=summary)
        command.add_argument("--wait", type=float, default=WAIT_SECONDS, metavar="SECONDS", help="for the store")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        return run(args.command, settings, args.wait)
    except (SettingsError, StoreError) as exc:
        print(f"store: {exc}", file=sys.stderr)
    except ClientError as exc:
        code = error_code(exc)
        hint = " (are MINIO_ACCESS_KEY / MINIO_SECRET_KEY the store's root keys?)" if code in KEYS_REFUSED else ""
        print(f"store: the object store refused {exc.operation_name}: {code}{hint}", file=sys.stderr)
    except (BotoConnectionError, HTTPClientError) as exc:
        print(f"store: lost the object store at {settings.endpoint_host} ({type(exc).__name__})", file=sys.stderr)
    return 2


def run(command: str, settings: Settings, wait: float) -> int:
    s3, bucket, host = make_s3_client(settings), settings.bucket, settings.endpoint_host
    if command == "ensure-bucket":
        created = when_store_answers(lambda: ensure_bucket(s3, bucket), host, wait)
        print(f"bucket {bucket} {'created' if created else 'exists'}, with Object Lock, at {host}")
        return 0
    if not when_store_answers(lambda: bucket_exists(s3, bucket), host, wait):
        raise StoreError(f"bucket {bucket} does not exist at {host} (python -m workers.store ensure-bucket)")
    return report(check(s3, bucket), bucket, host)


def report(outcomes: list[Outcome], bucket: str, host: str) -> int:
    for outcome in outcomes:
        print(outcome.line())
    failed = [o.probe for o in outcomes if o.status == "BAD"]
    if failed:
        print(f"store check: bucket {bucket} at {host} fails {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
