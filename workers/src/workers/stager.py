"""Stager worker: copies a registered submission's files from the inbox into the raw zone.

Server-side copies (multipart above 5 GiB), each checked against the manifest's SHA-256 by a
streamed read. Raw writes are create-only at the server: every copy carries `If-None-Match: *`
(on CopyObject, or on CompleteMultipartUpload), so a raw object is never overwritten, even by
two stagers racing; a refusal is checked against the manifest and reported. Each copy's exact
version is then read back, locked (Object Lock, RAW_RETENTION_*: the copy itself carries no lock on
every store) and recorded in `raw_object` in the same transaction that marks the file staged.
Once every file is staged the submission is "staged"; then, unless STAGER_DELETE_INBOX is false,
the inbox versions its registration observed are deleted by VersionId, with the older versions
and delete markers at the same key, so a versioned inbox keeps no leftovers: found by one listing
of the group, deleted in DeleteObjects batches where the server honours each entry's VersionId
(else one delete each, in parallel; VersionDeleter). Last, the partner's
receipt goes to their outbox (workers.receipts). Safe to re-run after a crash.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from botocore.exceptions import ClientError
from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.orm import Session

from workers import raw_zone, receipts
from workers.db import InboxObject, RawObject, Submission, SubmissionFile, metadata_engine, utcnow
from workers.faults import checkpoint
from workers.inbox import file_id
from workers.manifest import Manifest
from workers.raw_zone import RawVersion, current_version, protect, version_sha256, wanted
from workers.registrar import load_manifest
from workers.runtime import Metadata, WorkerError, describe_failure, run_worker
from workers.settings import RetentionSettings, Settings, load_intake_settings, load_retention_settings
from workers.store import NOT_FOUND, PRECONDITION_FAILED, S3Client, bare, error_code, make_s3_client, quoted

MiB = 1024 * 1024
# S3's single CopyObject limit; above it the copy must be multipart (UploadPartCopy).
MULTIPART_THRESHOLD = 5 * 1024 * MiB
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 512 * MiB
MAX_PARTS = 10_000
# Files copied at once, and parts per multipart copy: 4 x 2 stays within botocore's 10 connections.
FILE_WORKERS = 4
PART_WORKERS = 2
CLEANUP_WORKERS = 8
# S3's limit of entries per DeleteObjects call.
DELETE_BATCH = 1000
# A version found gone: deleted already, by an earlier run or by hand.
GONE = (*NOT_FOUND, "NoSuchVersion")
EMPTY_ETAG = hashlib.md5(b"", usedforsecurity=False).hexdigest()
# Verified files recorded per transaction: one commit per file held the pool back on small files.
MARK_BATCH = 64
READ_CHUNK = MiB
T = TypeVar("T")


@dataclass(frozen=True)
class CopyPlan:
    """Files larger than `multipart_threshold` are copied in parts of `part_size` bytes."""

    multipart_threshold: int = MULTIPART_THRESHOLD

    def part_size(self, size: int) -> int:
        wanted = min(max(self.multipart_threshold, MIN_PART_SIZE), MAX_PART_SIZE)
        return max(wanted, math.ceil(size / MAX_PARTS))


@dataclass(frozen=True)
class StagedFile:
    inbox_key: str
    raw_key: str
    size_bytes: int
    sha256: str
    copied: bool  # False: the raw object was already there with the manifest's bytes
    version: RawVersion | None = None  # None: staged (and recorded) by an earlier run


@dataclass(frozen=True)
class Copier:
    """Where and how one submission's files are copied and locked."""

    s3: S3Client
    bucket: str
    submission_id: str
    plan: CopyPlan
    retention: RetentionSettings


def stage_submission(
    *,
    engine: Engine,
    s3: S3Client,
    bucket: str,
    submission_id: str,
    raw_root: str,
    delete_inbox: bool,
    multipart_threshold: int = MULTIPART_THRESHOLD,
    file_workers: int = FILE_WORKERS,
    retention: RetentionSettings | None = None,
) -> Metadata:
    """Stage one registered submission; an already-staged one only gets its inbox cleanup and its
    receipt (sent last, failing safe). `retention` defaults to the RAW_RETENTION_* settings."""
    submission, files = load_submission(engine, submission_id, raw_root)
    if submission.status not in ("registered", "staged", "duplicate"):
        raise WorkerError(f"submission {submission_id} is {submission.status!r}; only a registered one is staged")
    if submission.status == "duplicate":
        # Its bytes are already in the raw zone under the original submission: nothing is copied.
        staged = []
    elif submission.status == "staged":
        staged = [StagedFile(f.inbox_key, f.raw_key, f.size_bytes, f.sha256, copied=False) for f in files]
    else:
        check_manifest(read_manifest(engine, s3, bucket, submission), submission, files)
        copier = Copier(
            s3, bucket, submission_id, CopyPlan(multipart_threshold), retention or load_retention_settings()
        )
        staged = copy_files(engine, copier, files, file_workers)
        checkpoint("stager.files_marked")
        mark_submission_staged(engine, submission_id)
        checkpoint("stager.submission_staged")
    removed, kept = clean_inbox(engine, s3, bucket, submission_id) if delete_inbox else (0, 0)
    status = "duplicate" if submission.status == "duplicate" else "staged"
    receipt = receipts.deliver(s3, bucket, receipts.for_submission(engine, submission_id))
    return {**report(submission, files, staged, removed, kept, status), **receipt}


def load_submission(engine: Engine, submission_id: str, raw_root: str) -> tuple[Submission, list[SubmissionFile]]:
    with Session(engine) as session:
        submission = session.scalar(select(Submission).where(Submission.submission_id == submission_id))
        if submission is None:
            raise WorkerError(f"unknown submission {submission_id!r}")
        if submission.manifest_written_at is None:
            raise WorkerError(f"submission {submission_id} has no manifest yet (registration unfinished)")
        files = session.scalars(
            select(SubmissionFile).where(SubmissionFile.submission_id == submission_id).order_by(SubmissionFile.raw_key)
        ).all()
    # The raw zone is the only place this worker writes; a key outside it is refused, not copied.
    if not submission.raw_prefix.startswith(raw_root):
        raise WorkerError(
            f"submission {submission_id} raw prefix {submission.raw_prefix} is outside RAW_PREFIX {raw_root}"
        )
    for f in files:
        if not f.raw_key.startswith(submission.raw_prefix) or f.raw_key == submission.manifest_key:
            raise WorkerError(f"submission {submission_id} file {file_id(f.inbox_key)} is not under its raw prefix")
    return submission, list(files)


def read_manifest(engine: Engine, s3: S3Client, bucket: str, submission: Submission) -> Manifest:
    """The manifest's recorded version: a later version at its key is not the manifest."""
    key = submission.manifest_key
    with Session(engine) as session:
        version_id = session.scalar(select(RawObject.version_id).where(RawObject.key == key))
    if version_id is None:
        raise WorkerError(f"manifest {key} has no recorded version (registration unfinished); nothing staged")
    try:
        body = s3.get_object(Bucket=bucket, Key=key, VersionId=version_id)["Body"].read()
    except ClientError as exc:
        if error_code(exc) in (*NOT_FOUND, "NoSuchVersion"):
            raise WorkerError(f"manifest {key}'s recorded version is not in the object store") from None
        raise
    try:
        return Manifest.from_bytes(body)
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkerError(f"manifest {key} is unreadable: {type(exc).__name__}") from None


def check_manifest(manifest: Manifest, submission: Submission, files: list[SubmissionFile]) -> None:
    """The manifest and the registered rows must describe the same files, byte for byte."""
    key = submission.manifest_key
    if manifest.submission_id != submission.submission_id:
        raise WorkerError(f"manifest {key} names submission {manifest.submission_id}, not {submission.submission_id}")
    if len(files) != submission.file_count:
        raise WorkerError(
            f"submission {submission.submission_id} records {submission.file_count} files but has {len(files)} rows"
        )
    in_manifest = {(f.inbox_key, f.raw_key, f.size_bytes, f.sha256, bare(f.etag)) for f in manifest.files}
    in_db = {(f.inbox_key, f.raw_key, f.size_bytes, f.sha256, bare(f.etag)) for f in files}
    differing = sorted(file_id(row[0]) for row in in_manifest ^ in_db)
    if differing:
        raise WorkerError(
            f"manifest {key} disagrees with the registered files on {len(set(differing))} file(s), "
            f"first {differing[0]}; nothing staged"
        )


def copy_files(engine: Engine, copier: Copier, files: list[SubmissionFile], workers: int) -> list[StagedFile]:
    """Stage the files not yet marked, in parallel; record the verified ones in batches, then fail
    on any refusal. A run stopped before a batch is recorded finds those copies again (the
    create-only copy is refused, the version there is verified) and records them."""
    done = [StagedFile(f.inbox_key, f.raw_key, f.size_bytes, f.sha256, copied=False) for f in files if f.staged_at]
    failures: list[str] = []
    verified: list[StagedFile] = []

    def mark_verified() -> None:
        if verified:
            mark_files_staged(engine, verified)
            for staged in verified:
                checkpoint("stager.marked")
                done.append(staged)
            verified.clear()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stager") as pool:
        futures = [pool.submit(stage_file, copier, f) for f in files if not f.staged_at]
        for future in as_completed(futures):
            try:
                verified.append(future.result())
            except Exception as exc:  # noqa: BLE001 - reported together once every file has had its try
                failures.append(describe_failure(exc, None))
                continue
            checkpoint("stager.verified")
            if len(verified) >= MARK_BATCH:
                mark_verified()
    mark_verified()
    if failures:
        raise WorkerError(f"{len(failures)} of {len(files)} files not staged; first: {sorted(failures)[0]}")
    return sorted(done, key=lambda s: s.raw_key)


def stage_file(copier: Copier, file: SubmissionFile) -> StagedFile:
    s3, bucket = copier.s3, copier.bucket
    try:
        version_id = create_only_copy(s3, bucket, file.inbox_key, file.etag, file.raw_key, file.size_bytes, copier.plan)
    except ClientError as exc:
        code = error_code(exc)
        if code not in (*PRECONDITION_FAILED, *NOT_FOUND):
            raise
        # Refused: the raw key is taken (If-None-Match) or the inbox object changed or went away
        # (CopySourceIfMatch). A raw object already there is this file only if its bytes say so.
        existing = current_version(s3, bucket, file.raw_key)
        if existing is not None:
            return verify_and_lock(copier, file, existing, copied=False)
        if code in NOT_FOUND:
            raise WorkerError(f"inbox object {file_id(file.inbox_key)} is gone; not staged") from None
        raise WorkerError(
            f"inbox object {file_id(file.inbox_key)} changed since registration (ETag differs); not staged"
        ) from None
    checkpoint("stager.copied")
    return verify_and_lock(copier, file, version_id, copied=True)


def verify_and_lock(copier: Copier, file: SubmissionFile, version_id: str, *, copied: bool) -> StagedFile:
    """Read the raw version back against the manifest's SHA-256, then lock it (dated from its own
    Last-Modified). A version with other bytes is left in place, unlocked, for inspection."""
    s3, bucket = copier.s3, copier.bucket
    digest, written_at = version_sha256(s3, bucket, file.raw_key, version_id)
    if digest != file.sha256:
        which = file_id(file.inbox_key)
        if copied:
            raise WorkerError(
                f"raw copy of {which} does not match the manifest's SHA-256; left in place for inspection"
            )
        raise WorkerError(
            f"raw copy of {which} already exists with different bytes; the server refused to overwrite it"
        )
    lock = protect(s3, bucket, file.raw_key, version_id, wanted(copier.retention, written_at), fresh=copied)
    checkpoint("stager.retention_set")
    version = RawVersion(
        copier.submission_id, file_id(file.inbox_key), "data", file.raw_key, version_id, digest, file.size_bytes, lock
    )
    return StagedFile(file.inbox_key, file.raw_key, file.size_bytes, file.sha256, copied=copied, version=version)


def create_only_copy(
    s3, bucket: str, source_key: str, source_etag: str, target_key: str, size: int, plan: CopyPlan
) -> str:
    """Server-side copy of one version of an object to a new key, refused by the server (412) if
    the target key exists or the source is no longer that version; the new version's id."""
    source = {"Bucket": bucket, "Key": source_key}
    if size <= plan.multipart_threshold:
        copied = s3.copy_object(
            Bucket=bucket, Key=target_key, CopySource=source, CopySourceIfMatch=quoted(source_etag), IfNoneMatch="*"
        )
        return copied["VersionId"]
    part_size = plan.part_size(size)
    ranges = [
        (number, start, min(start + part_size, size) - 1)
        for number, start in enumerate(range(0, size, part_size), start=1)
    ]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=target_key)["UploadId"]

    def copy_part(part: tuple[int, int, int]) -> dict[str, Any]:
        number, first, last = part
        result = s3.upload_part_copy(
            Bucket=bucket,
            Key=target_key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource=source,
            CopySourceIfMatch=quoted(source_etag),
            CopySourceRange=f"bytes={first}-{last}",
        )
        return {"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]}

    try:
        with ThreadPoolExecutor(max_workers=PART_WORKERS, thread_name_prefix="stager-part") as pool:
            parts = list(pool.map(copy_part, ranges))
        completed = s3.complete_multipart_upload(
            Bucket=bucket, Key=target_key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
        )
    except BaseException:
        # Parts of an unfinished upload are invisible, but they hold space until aborted.
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=target_key, UploadId=upload_id)
        except ClientError:
            pass
        raise
    return completed["VersionId"]


def mark_files_staged(engine: Engine, staged: Sequence[StagedFile]) -> None:
    """Record the raw versions and mark the files staged, in one transaction."""
    versions = [s.version for s in staged if s.version is not None]
    raw_zone.record_with(
        engine,
        versions,
        lambda session: session.execute(
            update(SubmissionFile)
            .where(SubmissionFile.raw_key.in_([s.raw_key for s in staged]), SubmissionFile.staged_at.is_(None))
            .values(staged_at=utcnow())
        ),
    )


def mark_submission_staged(engine: Engine, submission_id: str) -> None:
    with Session(engine) as session, session.begin():
        session.execute(
            update(Submission)
            .where(Submission.submission_id == submission_id, Submission.status != "staged")
            .values(status="staged", staged_at=utcnow())
        )


@dataclass(frozen=True)
class InboxVersion:
    """One version or delete marker at an observed inbox key, as listed."""

    version_id: str
    last_modified: datetime
    etag: str | None  # None: a delete marker


@dataclass(frozen=True)
class InboxRemoval:
    """What goes at one observed inbox object's key, and what stays."""

    inbox_object_id: int
    key: str
    others: tuple[str, ...]  # deleted before the registered version
    registered_version_id: str | None  # None: found gone
    newer_kept: bool  # a later upload with other bytes stays at the key, as a later drop's file


def clean_inbox(engine: Engine, s3: S3Client, bucket: str, submission_id: str) -> tuple[int, int]:
    """Delete the registered versions of the observed inbox objects; (removed, kept) counts,
    kept being keys where a later upload with other bytes stays.

    One paginated version listing over the objects' common prefix (the group) finds every key's
    versions. The marker goes first, alone: a group caught half-removed must not look complete to
    the sensor. Then the other versions, then the registered ones, each object marked removed
    once its batch is done: a run stopped midway finds the registered versions again and finishes.
    """
    with Session(engine) as session:
        pending = session.scalars(
            select(InboxObject).where(InboxObject.submission_id == submission_id, InboxObject.removed_at.is_(None))
        ).all()
    if not pending:
        return 0, 0
    versions = inbox_versions(s3, bucket, [obj.key for obj in pending])
    removals = {obj.id: plan_removal(obj, versions.get(obj.key, [])) for obj in pending}
    deleter = VersionDeleter(s3, bucket)
    markers = [removals[obj.id] for obj in pending if obj.role == "marker"]
    rest = [removals[obj.id] for obj in pending if obj.role != "marker"]
    for group in (markers, rest):
        deleter.delete([(r.key, v) for r in group for v in r.others], group)
        for chunk in chunked(group, DELETE_BATCH):
            deleter.delete([(r.key, r.registered_version_id) for r in chunk if r.registered_version_id], chunk)
            for _ in chunk:
                checkpoint("stager.inbox_deleted")
            mark_inbox_removed(engine, chunk)
    return len(removals), sum(r.newer_kept for r in removals.values())


def inbox_versions(s3: S3Client, bucket: str, keys: Sequence[str]) -> dict[str, list[InboxVersion]]:
    """Each key's versions and delete markers, in listing order, from one paginated listing of
    their common prefix (the group): a listing per key was most of the clean-up's time."""
    wanted_keys = set(keys)
    found: dict[str, list[InboxVersion]] = {}
    prefix = os.path.commonprefix(list(keys))
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for kind in ("Versions", "DeleteMarkers"):
            for v in page.get(kind, ()):
                if v["Key"] in wanted_keys:
                    etag = listed_etag(v) if kind == "Versions" else None
                    found.setdefault(v["Key"], []).append(InboxVersion(v["VersionId"], v["LastModified"], etag))
    return found


def listed_etag(version: Mapping[str, Any]) -> str:
    """SeaweedFS lists an empty object of an unversioned bucket with an empty ETag: its bytes are
    any empty object's, whose ETag is the MD5 of nothing."""
    etag = bare(version.get("ETag", ""))
    return EMPTY_ETAG if not etag and version.get("Size") == 0 else etag


def plan_removal(obj: InboxObject, versions: Sequence[InboxVersion]) -> InboxRemoval:
    """The key's registered version (the newest with the registered ETag), every other version of
    the same bytes, and every older version and delete marker go, by VersionId: nothing is left to
    pile up, and no delete marker is added. A newer upload with other bytes stays."""
    etag = bare(obj.etag)
    ordered = sorted(versions, key=lambda v: v.last_modified, reverse=True)  # newest first
    registered = next((i for i, v in enumerate(ordered) if v.etag == etag), None)
    if registered is None:
        return InboxRemoval(obj.id, obj.key, (), None, newer_kept=any(v.etag is not None for v in ordered))
    newer = ordered[:registered]
    others = [v.version_id for v in newer if v.etag in (None, etag)] + [v.version_id for v in ordered[registered + 1 :]]
    return InboxRemoval(
        obj.id,
        obj.key,
        tuple(others),
        ordered[registered].version_id,
        newer_kept=any(v.etag not in (None, etag) for v in newer),
    )


@dataclass
class VersionDeleter:
    """Deletes inbox versions by VersionId: in DeleteObjects calls of up to 1,000 where the server
    honours each entry's VersionId (AWS, MinIO, SeaweedFS 4.48), else one DeleteObject each,
    CLEANUP_WORKERS at a time.

    Which, the first call tells: one entry, at a key where everything is to go. A server that
    ignored the VersionId added a delete marker there (or removed that key's only object of an
    unversioned bucket, the same as deleting its "null" version): the marker is deleted by its own
    id, and the rest go one by one. A whole call refused, or an entry not reported deleted or gone
    (NoSuchVersion, NoSuchKey), is retried on its own call, which says what is wrong."""

    s3: S3Client
    bucket: str
    batched: bool | None = None  # None: not known yet

    def delete(self, targets: Sequence[tuple[str, str]], removals: Sequence[InboxRemoval]) -> None:
        rest = list(targets)
        if self.batched is None:
            safe = {r.key for r in removals if not r.newer_kept}
            probe = next((t for t in rest if t[0] in safe), None)
            if probe is None:
                self.delete_singly(rest)
                return
            rest.remove(probe)
            self.batched = self.probe(probe)
        if not self.batched:
            self.delete_singly(rest)
            return
        for chunk in chunked(rest, DELETE_BATCH):
            self.delete_singly(self.delete_batch(chunk))

    def probe(self, target: tuple[str, str]) -> bool:
        try:
            answer = self.call_delete_objects([target])
        except ClientError:
            self.delete_singly([target])
            return False
        deleted, errors = answer.get("Deleted", []), answer.get("Errors", [])
        if errors and errors[0].get("Code") in GONE:
            return True
        marker = deleted[0].get("DeleteMarkerVersionId") if deleted and deleted[0].get("DeleteMarker") else None
        made_marker = marker is not None and marker != target[1]  # a marker deleted by its id names itself
        if len(deleted) == 1 and answered(deleted[0]) == target and not made_marker:
            return True
        self.delete_singly([(target[0], marker)] if marker and made_marker else [])
        self.delete_singly([target])
        return False

    def delete_batch(self, chunk: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The entries not done: neither reported deleted nor gone."""
        try:
            answer = self.call_delete_objects(chunk)
        except ClientError:
            return list(chunk)
        done = Counter(answered(entry) for entry in answer.get("Deleted", ()))
        done.update(answered(entry) for entry in answer.get("Errors", ()) if entry.get("Code") in GONE)
        left = []
        for target in chunk:
            if done[target] > 0:
                done[target] -= 1
            else:
                left.append(target)
        return left

    def call_delete_objects(self, targets: Sequence[tuple[str, str]]) -> Mapping[str, Any]:
        objects: list[Any] = [{"Key": key, "VersionId": version_id} for key, version_id in targets]
        return self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": False})

    def delete_singly(self, targets: Sequence[tuple[str, str]]) -> None:
        """Each by its own call; a refusal is reported by file id once every one has had its try."""

        def one(target: tuple[str, str]) -> str | None:
            try:
                delete_version(self.s3, self.bucket, *target)
            except ClientError as exc:
                return f"{file_id(target[0])} ({error_code(exc)})"
            return None

        if not targets:
            return
        with ThreadPoolExecutor(max_workers=CLEANUP_WORKERS, thread_name_prefix="stager-clean") as pool:
            failures = sorted(f for f in pool.map(one, targets) if f)
        if failures:
            raise WorkerError(f"{len(failures)} inbox version(s) not deleted; first {failures[0]}")


def answered(entry: Mapping[str, Any]) -> tuple[str, str]:
    """The (key, version id) an entry of a DeleteObjects answer is about. SeaweedFS names a
    deleted delete marker by DeleteMarkerVersionId alone, and an unversioned bucket's "null" not."""
    return entry["Key"], entry.get("VersionId") or entry.get("DeleteMarkerVersionId") or "null"


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def delete_version(s3: S3Client, bucket: str, key: str, version_id: str) -> None:
    try:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version_id)
    except ClientError as exc:
        if error_code(exc) not in GONE:
            raise


def mark_inbox_removed(engine: Engine, removals: Sequence[InboxRemoval]) -> None:
    """One transaction for a batch's objects, each with the version deleted (None: found gone)."""
    statement = (
        update(InboxObject)
        .where(InboxObject.id == bindparam("object_id"), InboxObject.removed_at.is_(None))
        .values(removed_at=utcnow(), removed_version_id=bindparam("version_id"))
    )
    rows = [{"object_id": r.inbox_object_id, "version_id": r.registered_version_id} for r in removals]
    with engine.begin() as connection:
        connection.execute(statement, rows)


def report(
    submission: Submission,
    files: Sequence[SubmissionFile],
    staged: Iterable[StagedFile],
    removed: int,
    kept: int,
    status: str = "staged",
) -> Metadata:
    """What was staged, and what the submission is (its submitter, size and file types: the
    orchestrator reports them on the submitter's partition of the submissions asset)."""
    staged = list(staged)
    copied = [s for s in staged if s.copied]
    return {
        "submission_id": submission.submission_id,
        "status": status,
        "submitter_id": submission.submitter_id,
        "file_type": submission.file_type,
        "file_types": sorted({f.file_type for f in files}),
        "file_count": submission.file_count,
        "total_bytes": submission.total_bytes,
        "duplicate_of": submission.duplicate_of or "",
        "files_copied": len(copied),
        "files_already_staged": len(staged) - len(copied),
        "bytes_copied": sum(s.size_bytes for s in copied),
        "inbox_objects_removed": removed,
        "inbox_objects_kept_changed": kept,
        "file_table": [
            {"file_id": file_id(s.inbox_key), "size_bytes": s.size_bytes, "sha256": s.sha256} for s in staged
        ],
    }


@dataclass(frozen=True)
class Unadopted:
    submission_id: str
    file_id: str  # a data file's id, or "manifest"
    reason: str


def adopt_unrecorded(engine: Engine, s3: S3Client, bucket: str, retention: RetentionSettings) -> Metadata:
    """Once, after a bucket migration (README "The bucket and the store check"): the staged files
    and manifests with no recorded version get their current version locked and recorded, each
    only if it holds the registered bytes (a manifest: the bytes its rows make). What does not is
    listed by file id, left unlocked and unrecorded, and the run fails naming how many."""
    adopted, refused = 0, []
    with Session(engine) as session:
        recorded = set(session.scalars(select(RawObject.key)))
        staged = session.scalars(select(Submission).where(Submission.status == "staged")).all()
        staged_files = session.scalars(select(SubmissionFile).where(SubmissionFile.staged_at.is_not(None))).all()
        session.expunge_all()
    candidates: list[tuple[str, str, str, str, int]] = [
        (f.submission_id, file_id(f.inbox_key), f.raw_key, f.sha256, f.size_bytes)
        for f in staged_files
        if f.raw_key not in recorded
    ]
    for submission in staged:
        if submission.manifest_key not in recorded:
            body = load_manifest(engine, submission.submission_id)[1].to_bytes()
            digest = hashlib.sha256(body).hexdigest()
            candidates.append((submission.submission_id, "manifest", submission.manifest_key, digest, len(body)))
    for submission_id, which, key, sha256, size in candidates:
        version_id = current_version(s3, bucket, key)
        if version_id is None:
            refused.append(Unadopted(submission_id, which, "no current version at its key"))
            continue
        digest, written_at = version_sha256(s3, bucket, key, version_id)
        if digest != sha256:
            refused.append(Unadopted(submission_id, which, "the current version is not the registered bytes"))
            continue
        lock = protect(s3, bucket, key, version_id, wanted(retention, written_at))
        kind = "manifest" if which == "manifest" else "data"
        version = RawVersion(submission_id, which, kind, key, version_id, digest, size, lock)
        raw_zone.record_with(engine, [version], lambda session: None)
        adopted += 1
    if refused:
        first = refused[0]
        raise WorkerError(
            f"adopted {adopted}; {len(refused)} not adopted, first: submission {first.submission_id} "
            f"{first.file_id}: {first.reason}; run `python -m workers.audit` for every one"
        )
    return {"adopted": adopted, "not_adopted": 0}


def work(settings: Settings, params: Mapping[str, Any]) -> Metadata:
    if params.get("adopt_unrecorded"):
        with metadata_engine(settings.metadata_db_url) as engine:
            return adopt_unrecorded(engine, make_s3_client(settings), settings.bucket, load_retention_settings())
    submission_id = params.get("submission_id")
    if not isinstance(submission_id, str) or not submission_id:
        raise WorkerError("submission_id is required (--submission-id, or the Pipes extra submission_id)")
    intake = load_intake_settings()
    with metadata_engine(settings.metadata_db_url) as engine:
        return stage_submission(
            engine=engine,
            s3=make_s3_client(settings),
            bucket=settings.bucket,
            submission_id=submission_id,
            raw_root=intake.raw_prefix,
            delete_inbox=intake.stager_delete_inbox,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--submission-id",
        help="the registered submission to stage (required when run by hand); "
        "RAW_PREFIX and STAGER_DELETE_INBOX come from the environment",
    )
    parser.add_argument(
        "--adopt-unrecorded",
        action="store_true",
        help="once, after moving to a bucket with Object Lock: lock and record the staged copies and "
        "manifests that have no recorded version, each only if it holds its registered bytes",
    )


def main(argv: list[str] | None = None) -> int:
    return run_worker("stager", work, argv, add_arguments=add_arguments, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
