"""Staging: the stager over one registered submission, against the floor and a naive copy.

The submission is made by the real classifier and registrar. Each variant copies the same inbox
files with the stager's parallelism (FILE_WORKERS) into a prefix of its own, which is removed
before the next variant runs:
- floor: one server-side CopyObject per file plus one streamed SHA-256 read of the copy;
- stager: `stage_submission`, inbox kept (the submission is reset to registered between rounds);
- naive: download each file to a temporary file while hashing it, then upload it again;
- two steps between the floor and the stager: the floor plus a HEAD of each target (the stager's
  never-overwrite check), then that with boto3's managed `s3.copy` (the stager's copy call) instead
  of CopyObject; what remains between the latter and the stager is its bookkeeping (DB marks).
The stager's inbox clean-up (STAGER_DELETE_INBOX=true) is timed once, apart, at the very end: the
whole run, and within it `stager.clean_inbox` (inbox_cleanup_seconds).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from unittest import mock

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench.services import S3Endpoint
from workers import classifier, layouts, raw_zone, registrar, stager
from workers.db import RawObject, Submission, SubmissionFile, make_engine
from workers.settings import load_retention_settings, load_settings
from workers.store import make_s3_client, sha256_of

MiB = 1024 * 1024
GROUP = "inbox/bench/unknown/staging-drop/"
LARGE_FILES = 4
SMALL_FILE = 256 * 1024
LARGE_SHARE = 0.75


@dataclass(frozen=True)
class SourceFile:
    inbox_key: str
    raw_key: str
    size: int
    sha256: str
    etag: str


def file_sizes(total_mib: int) -> list[int]:
    """A mix: LARGE_SHARE of the bytes in LARGE_FILES files, the rest in 256 KiB files."""
    total = total_mib * MiB
    large = int(total * LARGE_SHARE) // LARGE_FILES
    small_count = max(1, (total - large * LARGE_FILES) // SMALL_FILE)
    return [large] * LARGE_FILES + [SMALL_FILE] * small_count


def drop_submission(endpoint: S3Endpoint, bucket: str, total_mib: int) -> int:
    """Put the files and the marker into the inbox, as a partner would; the bytes put."""
    s3 = endpoint.client(connections=8)
    sizes = file_sizes(total_mib)

    def put(item: tuple[int, int]) -> None:
        index, size = item
        kind = "large" if size > SMALL_FILE else "small"
        body = os.urandom(size)
        s3.put_object(Bucket=bucket, Key=f"{GROUP}{kind}/file-{index:05d}.bin", Body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, enumerate(sizes)))
    s3.put_object(Bucket=bucket, Key=GROUP + "_SUCCESS", Body=b"")
    return sum(sizes)


def register(db_url: str) -> str:
    """The real classifier and registrar over the drop; the submission id."""
    settings = load_settings()
    engine = make_engine(db_url)
    layouts.sync(engine, layouts.parse_definitions(layouts.packaged_definitions())[1])
    engine.dispose()
    files = classifier.work(settings, {"grouping_key": GROUP})["files"]
    result = registrar.work(settings, {"grouping_key": GROUP, "grouping_method": "MARKER_FILE", "files": files})
    return result["submission_id"]


def source_files(db_url: str, submission_id: str) -> list[SourceFile]:
    engine = make_engine(db_url)
    with Session(engine) as session:
        rows = session.scalars(select_files(submission_id)).all()
        files = [SourceFile(r.inbox_key, r.raw_key, r.size_bytes, r.sha256, r.etag) for r in rows]
    engine.dispose()
    return files


def select_files(submission_id: str):
    return sa.select(SubmissionFile).where(SubmissionFile.submission_id == submission_id)


def reset_submission(db_url: str, submission_id: str) -> None:
    """Back to registered, so the next round copies everything again. The last round's raw
    versions stay in the store (locked: only hidden by delete markers), so their records go."""
    engine = make_engine(db_url)
    with Session(engine) as session, session.begin():
        session.execute(sa.delete(RawObject).where(RawObject.submission_id == submission_id, RawObject.kind == "data"))
        session.execute(
            sa.update(Submission)
            .where(Submission.submission_id == submission_id)
            .values(status="registered", staged_at=None)
        )
        session.execute(
            sa.update(SubmissionFile).where(SubmissionFile.submission_id == submission_id).values(staged_at=None)
        )
    engine.dispose()


def remove_keys(s3, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.delete_object(Bucket=bucket, Key=key), keys))


def floor_copy(s3, bucket: str, files: list[SourceFile], workers: int) -> None:
    parallel_copies(s3, bucket, files, workers, "bench-floor/", plain_copy)


def parallel_copies(s3, bucket: str, files: list[SourceFile], workers: int, prefix: str, copy, head=False) -> None:
    """Each file: (a HEAD of the target, as the stager's never-overwrite check), the copy, a streamed SHA-256 read."""

    def one(f: SourceFile) -> None:
        target = prefix + f.raw_key
        if head:
            raw_zone.current_version(s3, bucket, target)
        copy(s3, bucket, f, target)
        if sha256_of(s3, bucket, target) != f.sha256:
            raise RuntimeError(f"copy of {f.inbox_key} at {target} does not match")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))


def plain_copy(s3, bucket: str, f: SourceFile, target: str) -> None:
    s3.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": f.inbox_key})


def create_only_copy(s3, bucket: str, f: SourceFile, target: str) -> None:
    """The stager's call: a server-side copy refused if the target exists or the source changed."""
    stager.create_only_copy(s3, bucket, f.inbox_key, f.etag, target, f.size, stager.CopyPlan())


def create_only_copy_hash_and_lock(s3, bucket: str, files: list[SourceFile], workers: int, prefix: str) -> None:
    """The stager's per-file work without the database: the conditional copy, the version read
    back and hashed, and its lock (the default retention)."""
    retention = load_retention_settings()

    def one(f: SourceFile) -> None:
        target = prefix + f.raw_key
        version = stager.create_only_copy(s3, bucket, f.inbox_key, f.etag, target, f.size, stager.CopyPlan())
        digest, written = raw_zone.version_sha256(s3, bucket, target, version)
        if digest != f.sha256:
            raise RuntimeError(f"copy of {f.inbox_key} at {target} does not match")
        raw_zone.protect(s3, bucket, target, version, raw_zone.wanted(retention, written), fresh=True)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))


def naive_copy(s3, bucket: str, files: list[SourceFile], workers: int) -> None:
    def one(f: SourceFile) -> None:
        digest = hashlib.sha256()
        with tempfile.TemporaryFile() as spool:
            for chunk in s3.get_object(Bucket=bucket, Key=f.inbox_key)["Body"].iter_chunks(MiB):
                digest.update(chunk)
                spool.write(chunk)
            if digest.hexdigest() != f.sha256:
                raise RuntimeError(f"download of {f.inbox_key} does not match")
            spool.seek(0)
            s3.upload_fileobj(spool, bucket, "bench-naive/" + f.raw_key)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))


def run_stager(db_url: str, submission_id: str, delete_inbox: bool) -> dict:
    settings = load_settings()
    engine = make_engine(db_url)
    try:
        return stager.stage_submission(
            engine=engine,
            s3=make_s3_client(settings),
            bucket=settings.bucket,
            submission_id=submission_id,
            raw_root="raw/",
            delete_inbox=delete_inbox,
        )
    finally:
        engine.dispose()


def run_stager_timing_cleanup(db_url: str, submission_id: str) -> tuple[dict, float]:
    """The stager with its inbox clean-up; and the seconds `stager.clean_inbox` took within it."""
    clean_inbox = stager.clean_inbox
    seconds: list[float] = []

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return clean_inbox(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    with mock.patch.object(stager, "clean_inbox", timed):
        report = run_stager(db_url, submission_id, delete_inbox=True)
    return report, sum(seconds)


def run(endpoint: S3Endpoint, bucket: str, db_url: str, total_mib: int, repeats: int, log) -> dict:
    began = time.perf_counter()
    total_bytes = drop_submission(endpoint, bucket, total_mib)
    submission_id = register(db_url)
    files = source_files(db_url, submission_id)
    log(
        f"staging: {len(files)} files, {total_bytes / MiB:.0f} MiB dropped and registered in "
        f"{time.perf_counter() - began:.0f} s"
    )
    s3 = endpoint.client(connections=stager.FILE_WORKERS * stager.PART_WORKERS)
    workers = stager.FILE_WORKERS
    raw_keys = [f.raw_key for f in files]
    variants = {
        "floor_copy_and_hash": (
            lambda: floor_copy(s3, bucket, files, workers),
            lambda: remove_keys(s3, bucket, ["bench-floor/" + k for k in raw_keys]),
        ),
        # The stager's steps added one at a time, to find what its distance from the floor is made of.
        "floor_with_target_head": (
            lambda: parallel_copies(s3, bucket, files, workers, "bench-head/", plain_copy, head=True),
            lambda: remove_keys(s3, bucket, ["bench-head/" + k for k in raw_keys]),
        ),
        "create_only_copy_and_hash": (
            lambda: parallel_copies(s3, bucket, files, workers, "bench-create-only/", create_only_copy),
            lambda: remove_keys(s3, bucket, ["bench-create-only/" + k for k in raw_keys]),
        ),
        "create_only_copy_hash_and_lock": (
            lambda: create_only_copy_hash_and_lock(s3, bucket, files, workers, "bench-locked/"),
            lambda: remove_keys(s3, bucket, ["bench-locked/" + k for k in raw_keys]),
        ),
        "stager": (
            lambda: run_stager(db_url, submission_id, delete_inbox=False),
            lambda: (remove_keys(s3, bucket, raw_keys), reset_submission(db_url, submission_id)),
        ),
        "naive_download_upload": (
            lambda: naive_copy(s3, bucket, files, workers),
            lambda: remove_keys(s3, bucket, ["bench-naive/" + k for k in raw_keys]),
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (call, undo) in variants.items():
            started = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - started)
            undo()
    started = time.perf_counter()
    report, cleanup = run_stager_timing_cleanup(db_url, submission_id)
    with_cleanup = time.perf_counter() - started
    if report["files_copied"] != len(files) or report["inbox_objects_removed"] != len(files) + 1:
        raise RuntimeError(f"the stager did not stage and clean every file: {report}")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    medians["stager_with_inbox_cleanup"] = with_cleanup
    floor = medians["floor_copy_and_hash"]
    mib = total_bytes / MiB
    return {
        "files": len(files),
        "large_files": sum(f.size > SMALL_FILE for f in files),
        "small_file_bytes": SMALL_FILE,
        "total_mib": mib,
        "file_workers": workers,
        "repeats": repeats,
        "db_dialect": sa.make_url(db_url).get_backend_name(),
        "seconds": medians,
        "all_seconds": seconds,
        "mib_per_second": {name: mib / value for name, value in medians.items()},
        # Throughput ratio: above 1 is faster than the floor.
        "throughput_ratio_to_floor": {name: floor / value for name, value in medians.items()},
        # The clean-up's own part of stager_with_inbox_cleanup (every file and the marker).
        "inbox_cleanup_seconds": cleanup,
        "inbox_objects_removed": report["inbox_objects_removed"],
    }
