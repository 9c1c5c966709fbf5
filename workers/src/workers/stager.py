"""Stager worker: copies a registered submission's files from the inbox into the raw zone.

Server-side copies (multipart above 5 GiB), each checked against the manifest's SHA-256 by a
streamed read. Raw writes are create-only at the server: every copy carries `If-None-Match: *`
(on CopyObject, or on CompleteMultipartUpload), so a raw object is never overwritten, even by
two stagers racing; a refusal is checked against the manifest and reported. Once every file is
verified the submission is "staged"; then, unless STAGER_DELETE_INBOX is false, the inbox objects
its registration observed are removed, each only while its ETag is still the recorded one. Safe
to re-run after a crash.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from workers.db import InboxObject, Submission, SubmissionFile, metadata_engine, utcnow
from workers.faults import checkpoint
from workers.inbox import file_id
from workers.manifest import Manifest
from workers.runtime import Metadata, WorkerError, describe_failure, run_worker
from workers.settings import Settings, load_intake_settings
from workers.store import NOT_FOUND, PRECONDITION_FAILED, S3Client, bare, error_code, make_s3_client, quoted, sha256_of

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
READ_CHUNK = MiB


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
) -> Metadata:
    """Stage one registered submission; an already-staged one only gets its inbox cleanup."""
    submission, files = load_submission(engine, submission_id, raw_root)
    if submission.status not in ("registered", "staged", "duplicate"):
        raise WorkerError(f"submission {submission_id} is {submission.status!r}; only a registered one is staged")
    if submission.status == "duplicate":
        # Its bytes are already in the raw zone under the original submission: nothing is copied.
        staged = []
    elif submission.status == "staged":
        staged = [StagedFile(f.inbox_key, f.raw_key, f.size_bytes, f.sha256, copied=False) for f in files]
    else:
        check_manifest(read_manifest(s3, bucket, submission.manifest_key), submission, files)
        staged = copy_files(engine, s3, bucket, files, CopyPlan(multipart_threshold), file_workers)
        checkpoint("stager.files_marked")
        mark_submission_staged(engine, submission_id)
        checkpoint("stager.submission_staged")
    removed, kept = clean_inbox(engine, s3, bucket, submission_id) if delete_inbox else (0, 0)
    status = "duplicate" if submission.status == "duplicate" else "staged"
    return report(submission_id, staged, removed, kept, status)


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


def read_manifest(s3: S3Client, bucket: str, key: str) -> Manifest:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND:
            raise WorkerError(f"manifest {key} is recorded as written but is not in the object store") from None
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


def copy_files(
    engine: Engine, s3, bucket: str, files: list[SubmissionFile], plan: CopyPlan, workers: int
) -> list[StagedFile]:
    """Stage the files not yet marked, in parallel; record each as verified, then fail on any refusal."""
    done = [StagedFile(f.inbox_key, f.raw_key, f.size_bytes, f.sha256, copied=False) for f in files if f.staged_at]
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stager") as pool:
        futures = [pool.submit(stage_file, s3, bucket, f, plan) for f in files if not f.staged_at]
        for future in as_completed(futures):
            try:
                staged = future.result()
            except Exception as exc:  # noqa: BLE001 - reported together once every file has had its try
                failures.append(describe_failure(exc, None))
                continue
            checkpoint("stager.verified")
            mark_file_staged(engine, staged.raw_key)
            checkpoint("stager.marked")
            done.append(staged)
    if failures:
        raise WorkerError(f"{len(failures)} of {len(files)} files not staged; first: {sorted(failures)[0]}")
    return sorted(done, key=lambda s: s.raw_key)


def stage_file(s3: S3Client, bucket: str, file: SubmissionFile, plan: CopyPlan) -> StagedFile:
    try:
        create_only_copy(s3, bucket, file.inbox_key, file.etag, file.raw_key, file.size_bytes, plan)
    except ClientError as exc:
        code = error_code(exc)
        if code not in (*PRECONDITION_FAILED, *NOT_FOUND):
            raise
        # Refused: the raw key is taken (If-None-Match) or the inbox object changed or went away
        # (CopySourceIfMatch). A raw object already there is this file only if its bytes say so.
        if object_exists(s3, bucket, file.raw_key):
            return already_staged(s3, bucket, file)
        if code in NOT_FOUND:
            raise WorkerError(f"inbox object {file_id(file.inbox_key)} is gone; not staged") from None
        raise WorkerError(
            f"inbox object {file_id(file.inbox_key)} changed since registration (ETag differs); not staged"
        ) from None
    checkpoint("stager.copied")
    if sha256_of(s3, bucket, file.raw_key) != file.sha256:
        raise WorkerError(
            f"raw copy of {file_id(file.inbox_key)} does not match the manifest's SHA-256; left in place for inspection"
        )
    return StagedFile(file.inbox_key, file.raw_key, file.size_bytes, file.sha256, copied=True)


def already_staged(s3: S3Client, bucket: str, file: SubmissionFile) -> StagedFile:
    """The raw key exists: the same bytes (an earlier or concurrent run) count as staged."""
    if sha256_of(s3, bucket, file.raw_key) != file.sha256:
        raise WorkerError(
            f"raw copy of {file_id(file.inbox_key)} already exists with different bytes; "
            "the server refused to overwrite it"
        )
    return StagedFile(file.inbox_key, file.raw_key, file.size_bytes, file.sha256, copied=False)


def create_only_copy(
    s3, bucket: str, source_key: str, source_etag: str, target_key: str, size: int, plan: CopyPlan
) -> None:
    """Server-side copy of one version of an object to a new key, refused by the server (412) if
    the target key exists or the source is no longer that version."""
    source = {"Bucket": bucket, "Key": source_key}
    if size <= plan.multipart_threshold:
        s3.copy_object(
            Bucket=bucket, Key=target_key, CopySource=source, CopySourceIfMatch=quoted(source_etag), IfNoneMatch="*"
        )
        return
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
        s3.complete_multipart_upload(
            Bucket=bucket, Key=target_key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
        )
    except BaseException:
        # Parts of an unfinished upload are invisible, but they hold space until aborted.
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=target_key, UploadId=upload_id)
        except ClientError:
            pass
        raise


def object_exists(s3: S3Client, bucket: str, key: str) -> bool:
    return head_etag(s3, bucket, key) is not None


def head_etag(s3: S3Client, bucket: str, key: str) -> str | None:
    try:
        return bare(s3.head_object(Bucket=bucket, Key=key)["ETag"])
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND:
            return None
        raise


def mark_file_staged(engine: Engine, raw_key: str) -> None:
    with Session(engine) as session, session.begin():
        session.execute(
            update(SubmissionFile)
            .where(SubmissionFile.raw_key == raw_key, SubmissionFile.staged_at.is_(None))
            .values(staged_at=utcnow())
        )


def mark_submission_staged(engine: Engine, submission_id: str) -> None:
    with Session(engine) as session, session.begin():
        session.execute(
            update(Submission)
            .where(Submission.submission_id == submission_id, Submission.status != "staged")
            .values(status="staged", staged_at=utcnow())
        )


def clean_inbox(engine: Engine, s3: S3Client, bucket: str, submission_id: str) -> tuple[int, int]:
    """Remove the observed inbox objects still holding the recorded bytes; (removed, kept) counts."""
    with Session(engine) as session:
        pending = session.scalars(
            select(InboxObject).where(InboxObject.submission_id == submission_id, InboxObject.removed_at.is_(None))
        ).all()
    removed = kept = 0

    def remove(obj: InboxObject) -> tuple[InboxObject, bool]:
        return obj, remove_if_unchanged(s3, bucket, obj.key, bare(obj.etag))

    # The marker goes first, alone: a group caught half-removed must not look complete to the
    # sensor. The rest in parallel (a HEAD and a conditional DELETE each), marked as each is gone.
    markers = [obj for obj in pending if obj.role == "marker"]
    rest = [obj for obj in pending if obj.role != "marker"]
    with ThreadPoolExecutor(max_workers=CLEANUP_WORKERS, thread_name_prefix="stager-clean") as pool:
        for batch in (markers, rest):
            for obj, gone in pool.map(remove, batch):
                if gone:
                    checkpoint("stager.inbox_deleted")
                    mark_inbox_removed(engine, obj.id)
                    removed += 1
                else:
                    kept += 1
    return removed, kept


def remove_if_unchanged(s3: S3Client, bucket: str, key: str, etag: str) -> bool:
    """True once the recorded version is gone; False when a different upload sits at the key."""
    current = head_etag(s3, bucket, key)
    if current is None:
        return True  # removed by an earlier, interrupted run
    if current != etag:
        return False
    try:
        # IfMatch closes the gap between the HEAD and the delete on servers that honour it.
        s3.delete_object(Bucket=bucket, Key=key, IfMatch=quoted(etag))
    except ClientError as exc:
        if error_code(exc) in PRECONDITION_FAILED:
            return False
        raise
    return True


def mark_inbox_removed(engine: Engine, inbox_object_id: int) -> None:
    with Session(engine) as session, session.begin():
        session.execute(
            update(InboxObject)
            .where(InboxObject.id == inbox_object_id, InboxObject.removed_at.is_(None))
            .values(removed_at=utcnow())
        )


def report(
    submission_id: str, staged: Iterable[StagedFile], removed: int, kept: int, status: str = "staged"
) -> Metadata:
    staged = list(staged)
    copied = [s for s in staged if s.copied]
    return {
        "submission_id": submission_id,
        "status": status,
        "files_copied": len(copied),
        "files_already_staged": len(staged) - len(copied),
        "bytes_copied": sum(s.size_bytes for s in copied),
        "inbox_objects_removed": removed,
        "inbox_objects_kept_changed": kept,
        "file_table": [
            {"file_id": file_id(s.inbox_key), "size_bytes": s.size_bytes, "sha256": s.sha256} for s in staged
        ],
    }


def work(settings: Settings, params: Mapping[str, Any]) -> Metadata:
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


def main(argv: list[str] | None = None) -> int:
    return run_worker("stager", work, argv, add_arguments=add_arguments, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
