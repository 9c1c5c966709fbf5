"""The raw zone's write-once guarantee, as the store keeps it: each raw copy and manifest is one
exact version under S3 Object Lock, recorded in the metadata DB's `raw_object` table.

- `wanted`: the lock a version must carry, from RAW_RETENTION_* and the version's own
  Last-Modified, so every re-run asks for the same date.
- `protect`: puts that lock on one version (retention, and a legal hold when asked for) unless it
  already carries one at least as strong; the registrar and the stager call it.
- `record`: writes a version into `raw_object` within the caller's transaction; a key already
  recorded with another version is refused, never rewritten.

Read with `lock_of` and `current_version`, the same records let the audit tell an overwritten,
hidden or unlocked raw object from a good one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from botocore.exceptions import ClientError
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from workers.db import RawObject
from workers.runtime import WorkerError
from workers.settings import RetentionSettings
from workers.store import NOT_FOUND, READ_CHUNK, S3Client, error_code

# A version with no retention, or no legal hold, answers with one of these.
NO_LOCK = (
    "NoSuchObjectLockConfiguration",
    "NoSuchObjectLegalHold",
    "ObjectLockConfigurationNotFoundError",
    "InvalidRequest",
)
STRENGTH = {"GOVERNANCE": 1, "COMPLIANCE": 2}


@dataclass(frozen=True)
class Lock:
    mode: str  # GOVERNANCE | COMPLIANCE
    retain_until: datetime
    legal_hold: bool = False

    def covers(self, wanted: Lock) -> bool:
        """At least as strong as `wanted`: mode, date and legal hold."""
        return (
            STRENGTH.get(self.mode, 0) >= STRENGTH[wanted.mode]
            and self.retain_until >= wanted.retain_until
            and (self.legal_hold or not wanted.legal_hold)
        )


def whole_second_up(moment: datetime) -> datetime:
    """S3 dates travel in whole seconds; rounding up never lets a lock end early."""
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=0) + timedelta(seconds=math.ceil(moment.microsecond / 1_000_000))


def wanted(retention: RetentionSettings, written_at: datetime) -> Lock:
    """The lock a version written at `written_at` must carry."""
    # One second more: SeaweedFS can date one version a second apart on a GET and a HEAD.
    until = whole_second_up(written_at) + timedelta(days=retention.days, seconds=1)
    return Lock(retention.mode, until, retention.legal_hold)


def put_arguments(lock: Lock) -> dict[str, str | datetime]:
    """put_object / create_multipart_upload arguments that write a new version already locked."""
    arguments: dict[str, str | datetime] = {
        "ObjectLockMode": lock.mode,
        "ObjectLockRetainUntilDate": lock.retain_until,
    }
    if lock.legal_hold:
        arguments["ObjectLockLegalHoldStatus"] = "ON"
    return arguments


def lock_of(s3: S3Client, bucket: str, key: str, version_id: str) -> Lock | None:
    """The lock one version carries now; None when it has no retention."""
    try:
        retention = s3.get_object_retention(Bucket=bucket, Key=key, VersionId=version_id)["Retention"]
    except ClientError as exc:
        if error_code(exc) in NO_LOCK:
            return None
        raise
    try:
        hold = s3.get_object_legal_hold(Bucket=bucket, Key=key, VersionId=version_id)["LegalHold"]["Status"] == "ON"
    except ClientError as exc:
        if error_code(exc) not in NO_LOCK:
            raise
        hold = False
    return Lock(retention["Mode"], retention["RetainUntilDate"].astimezone(UTC), hold)


def apply_lock(s3: S3Client, bucket: str, key: str, version_id: str, lock: Lock) -> None:
    """Put `lock` on one version. The store refuses shortening a lock; that refusal is raised."""
    s3.put_object_retention(
        Bucket=bucket,
        Key=key,
        VersionId=version_id,
        Retention={"Mode": lock.mode, "RetainUntilDate": lock.retain_until},  # type: ignore[misc, arg-type]
    )
    if lock.legal_hold:
        s3.put_object_legal_hold(Bucket=bucket, Key=key, VersionId=version_id, LegalHold={"Status": "ON"})


def protect(s3: S3Client, bucket: str, key: str, version_id: str, lock: Lock, *, fresh: bool = False) -> Lock:
    """The lock `version_id` carries once `lock` is on it. A fresh version (just written by us, by
    a copy that carries no lock) is locked at once; another is read first, so a re-run keeps a
    stronger lock as it is and only adds what is missing."""
    have = None if fresh else lock_of(s3, bucket, key, version_id)
    if have is not None and have.covers(lock):
        return have
    if have is not None:
        # Never weaker than what is there: a longer date or a stronger mode stays.
        lock = Lock(
            max((have.mode, lock.mode), key=STRENGTH.__getitem__),
            max(have.retain_until, lock.retain_until),
            have.legal_hold or lock.legal_hold,
        )
    apply_lock(s3, bucket, key, version_id, lock)
    return lock


@dataclass(frozen=True)
class RawVersion:
    """One raw object's version as written, locked and recorded."""

    submission_id: str
    file_id: str  # a data file's id, or "manifest": what messages name instead of the key
    kind: str  # manifest | data
    key: str
    version_id: str
    sha256: str
    size_bytes: int
    lock: Lock

    def row(self) -> RawObject:
        return RawObject(
            submission_id=self.submission_id,
            kind=self.kind,
            key=self.key,
            version_id=self.version_id,
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            retention_mode=self.lock.mode,
            retain_until=self.lock.retain_until,
            legal_hold=self.lock.legal_hold,
        )


def record(session: Session, versions: Sequence[RawVersion]) -> None:
    """Add `versions` to raw_object in the caller's transaction, except those recorded already; a
    key recorded with another version is refused (a recorded version is never rewritten)."""
    keys = [v.key for v in versions]
    rows = session.execute(select(RawObject.key, RawObject.version_id).where(RawObject.key.in_(keys)))
    recorded: dict[str, str] = {key: version_id for key, version_id in rows}
    for version in versions:
        have = recorded.get(version.key)
        if have is None:
            session.add(version.row())
        elif have != version.version_id:
            raise WorkerError(
                f"submission {version.submission_id} {version.file_id}: the raw zone holds version "
                f"{version.version_id} but version {have} is recorded; run `python -m workers.audit`"
            )


def record_with(engine: Engine, versions: Sequence[RawVersion], change: Callable[[Session], object]) -> None:
    """`record(versions)` and `change(session)` in one transaction. Two workers racing on the same
    object (two registrars on one manifest, two stagers on one file) both find the same version;
    the one whose insert loses is retried once, and then finds that version recorded."""
    for attempt in (1, 2):
        try:
            with Session(engine) as session, session.begin():
                record(session, versions)
                change(session)
            return
        except IntegrityError:
            if attempt == 2:
                raise


def version_sha256(s3: S3Client, bucket: str, key: str, version_id: str) -> tuple[str, datetime]:
    """Hex SHA-256 of one version, streamed, and when that version was written."""
    response = s3.get_object(Bucket=bucket, Key=key, VersionId=version_id)
    digest = hashlib.sha256()
    for chunk in response["Body"].iter_chunks(READ_CHUNK):
        digest.update(chunk)
    return digest.hexdigest(), response["LastModified"]


def current_version(s3: S3Client, bucket: str, key: str) -> str | None:
    """The key's current VersionId; None when no version shows (deleted, or hidden by a delete marker)."""
    try:
        return s3.head_object(Bucket=bucket, Key=key).get("VersionId")
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND:
            return None
        raise
