"""Registrar worker: turns a complete, classified group into one submission with its manifest.

Only content not registered before becomes a submission: an inbox object version (key + ETag)
is registered at most once, so a re-run for the same content returns the same submission and
adds no rows, and a late file becomes a new submission linked to the group's previous one.
The submission id is derived from the group and its content, so a re-run after a crash
rebuilds the same id and the same manifest bytes.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, NoReturn, get_args

from botocore.exceptions import ClientError
from sqlalchemy import Engine, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from workers import classifier, discovery, raw_zone, receipts
from workers.classifier import ClassifiedFile
from workers.db import InboxObject as InboxObjectRow
from workers.db import Submission, SubmissionFile, metadata_engine, utcnow
from workers.faults import checkpoint
from workers.inbox import (
    UNKNOWN,
    Group,
    InboxObject,
    file_id,
    fingerprint,
    group_from_params,
    group_id,
    list_objects,
    relative_path,
)
from workers.manifest import Manifest, ManifestFile, manifest_key_for, raw_prefix_for
from workers.outcomes import record_rejections
from workers.runtime import Metadata, WorkerError, run_worker
from workers.settings import IntakeSettings, RetentionSettings, Settings, load_intake_settings, load_retention_settings
from workers.store import PRECONDITION_FAILED, S3Client, error_code, make_s3_client, sha256_of

MAX_KEY_BYTES = 1024  # S3's limit on a key, in UTF-8 bytes
HASH_THREADS = 8


def submission_id_for(grouping_key: str, content_hash: str) -> str:
    return "sub-" + hashlib.sha256(f"{grouping_key}\0{content_hash}".encode()).hexdigest()[:24]


def submission_file_type(group: Group, files: Sequence[ClassifiedFile]) -> str:
    """The path's declared type wins; under `unknown`, the one type every file classified as, else unknown."""
    if group.declared_file_type != UNKNOWN:
        return group.declared_file_type
    types = {f.file_type if f.classification == "classified" else UNKNOWN for f in files}
    return types.pop() if len(types) == 1 else UNKNOWN


def observed_objects(
    s3: S3Client, bucket: str, group: Group, files: Sequence[ClassifiedFile], marker: str
) -> list[InboxObject]:
    """The classified files as they are now, plus the marker; refuses if a classified file changed."""
    current = {obj.key: obj for obj in list_objects(s3, bucket, group.grouping_key)}
    changed = [f.key for f in files if f.key not in current or current[f.key].etag != f.etag]
    if changed:
        raise WorkerError(
            f"{len(changed)} file(s) changed or vanished since classification (first: {file_id(changed[0])}); "
            "the sensor will request a run for the new content"
        )
    keep = {f.key for f in files} | {group.marker_key(marker)}
    return [obj for key, obj in current.items() if key in keep]


def register(
    *,
    engine: Engine,
    s3,
    bucket: str,
    intake: IntakeSettings,
    group: Group,
    grouping_method: str,
    files: Sequence[ClassifiedFile],
) -> Metadata:
    try:
        method = discovery.grouping_method(grouping_method)
    except ValueError as exc:
        raise WorkerError(str(exc)) from None
    observed = observed_objects(s3, bucket, group, files, intake.marker_file)
    with Session(engine) as session:
        known = already_registered(session, files)
    new_files, too_long = split_too_long([f for f in files if (f.key, f.etag) not in known], group, intake)
    rejections = [(obj, f"raw key would exceed {MAX_KEY_BYTES} bytes", group.grouping_key) for obj in too_long]
    if not new_files and not known:
        marker = [obj for obj in observed if obj.key == group.marker_key(intake.marker_file)]
        rejections += [(m, "completion marker without data files", group.grouping_key) for m in marker]
        new = record_rejections(engine, rejections)
        reason = "the group holds no data files" if not too_long else "no file could be registered"
        return {
            "submission_id": None,
            "group_id": group_id(group.grouping_key),
            "submitter_id": group.submitter_id,
            "reason": reason,
            "rejections": [asdict(r) for r in new],
            **rejection_receipt(engine, s3, bucket, group, [obj for obj, _, _ in rejections], observed),
        }
    new = record_rejections(engine, rejections)
    if new_files:
        submission_id, created = _register_new(engine, s3, bucket, intake, group, method, new_files, observed)
    else:
        submission_id, created = _latest(engine, set(known.values())), False
    manifest = ensure_manifest(engine, s3, bucket, submission_id)
    result = report(engine, manifest, created)
    if result["status"] == "duplicate":
        receipt = receipts.deliver(s3, bucket, receipts.for_submission(engine, submission_id))
    elif not new_files and rejections:
        # Content registered before, and files rejected now: no submission holds them.
        receipt = rejection_receipt(engine, s3, bucket, group, [obj for obj, _, _ in rejections], observed)
    else:
        receipt = NO_RECEIPT  # the stager sends the submission's once it is staged
    # Files of the group left out (recorded in inbox_rejection) travel with the report, for the UI.
    return {**result, "rejections": [asdict(r) for r in new], **receipt}


# What a registration that leaves the receipt to the stager reports.
NO_RECEIPT: Metadata = {"receipt_id": "", "receipt": "none", "receipt_error": ""}


def rejection_receipt(
    engine: Engine,
    s3: S3Client,
    bucket: str,
    group: Group,
    rejected: Sequence[InboxObject],
    observed: Sequence[InboxObject],
) -> Metadata:
    """The receipt for rejected objects no submission holds; none when nothing was rejected."""
    if not rejected:
        return NO_RECEIPT
    listed = {obj.key: obj for obj in observed}  # with their upload times, which a classified file lacks
    objects = [listed.get(obj.key, obj) for obj in rejected]
    return receipts.deliver(s3, bucket, receipts.for_rejections(engine, group, objects))


def split_too_long(
    files: Sequence[ClassifiedFile], group: Group, intake: IntakeSettings
) -> tuple[list[ClassifiedFile], list[InboxObject]]:
    """Files whose raw key could exceed S3's 1,024-byte limit are rejected, not half-staged."""
    types = [group.declared_file_type, UNKNOWN, *(f.file_type for f in files)]
    longest = max(len(t.encode()) for t in types)
    prefix_bytes = len(raw_prefix_for(intake.raw_prefix, group.submitter_id, "", "sub-" + "0" * 24).encode()) + longest
    fits = [f for f in files if prefix_bytes + len(relative_path(f.key, group.grouping_key).encode()) <= MAX_KEY_BYTES]
    fitting = {f.key for f in fits}
    return fits, [f.object for f in files if f.key not in fitting]


def content_sha256_of(hashes: Mapping[str, str]) -> str:
    return hashlib.sha256("\n".join(sorted(hashes.values())).encode()).hexdigest()


def _original(engine: Engine, submitter_id: str, content_sha256: str, grouping_key: str) -> str | None:
    """The first submission of the same submitter with the same bytes under another drop."""
    with Session(engine) as session:
        return session.scalar(
            select(Submission.submission_id)
            .where(
                Submission.submitter_id == submitter_id,
                Submission.content_sha256 == content_sha256,
                Submission.grouping_key != grouping_key,
                Submission.duplicate_of.is_(None),
            )
            .order_by(Submission.id)
        )


def already_registered(session: Session, files: Sequence[ClassifiedFile]) -> dict[tuple[str, str], str]:
    """(inbox_key, etag) -> submission_id for the files some submission already holds."""
    found: dict[tuple[str, str], str] = {}
    pairs = [(f.key, f.etag) for f in files]
    for start in range(0, len(pairs), 500):
        rows = session.execute(
            select(SubmissionFile.inbox_key, SubmissionFile.etag, SubmissionFile.submission_id).where(
                tuple_(SubmissionFile.inbox_key, SubmissionFile.etag).in_(pairs[start : start + 500])
            )
        )
        found.update({(key, etag): sid for key, etag, sid in rows})
    return found


def _latest(engine: Engine, submission_ids: set[str]) -> str:
    with Session(engine) as session:
        return session.scalars(
            select(Submission.submission_id)
            .where(Submission.submission_id.in_(submission_ids))
            .order_by(Submission.id.desc())
        ).first() or _missing(", ".join(sorted(submission_ids)))


def _register_new(
    engine: Engine,
    s3: S3Client,
    bucket: str,
    intake: IntakeSettings,
    group: Group,
    grouping_method: discovery.GroupingMethod,
    new_files: Sequence[ClassifiedFile],
    observed: Sequence[InboxObject],
) -> tuple[str, bool]:
    new_keys = {f.key for f in new_files}
    content_hash = fingerprint(obj for obj in observed if obj.key in new_keys)
    submission_id = submission_id_for(group.grouping_key, content_hash)
    with Session(engine) as session:
        if session.scalar(select(Submission.id).where(Submission.submission_id == submission_id)):
            return submission_id, False  # registered by an earlier, interrupted run
    hashes = hash_files(s3, bucket, new_files)
    checkpoint("registrar.hashed")
    content_sha256 = content_sha256_of(hashes)
    duplicate_of = _original(engine, group.submitter_id, content_sha256, group.grouping_key)
    file_type = submission_file_type(group, new_files)
    raw_prefix = raw_prefix_for(intake.raw_prefix, group.submitter_id, file_type, submission_id)
    submission = Submission(
        submission_id=submission_id,
        submitter_id=group.submitter_id,
        file_type=file_type,
        grouping_key=group.grouping_key,
        grouping_method=grouping_method,
        content_hash=content_hash,
        raw_prefix=raw_prefix,
        manifest_key=manifest_key_for(raw_prefix),
        file_count=len(new_files),
        total_bytes=sum(f.size for f in new_files),
        status="duplicate" if duplicate_of else "registered",
        previous_submission_id=_previous(engine, group.grouping_key),
        content_sha256=content_sha256,
        duplicate_of=duplicate_of,
    )
    rows = [_file_row(submission_id, raw_prefix, group, f, hashes[f.key]) for f in new_files]
    seen = [
        _seen_row(submission_id, obj, new_keys)
        for obj in observed
        if obj.key in new_keys or obj.key == group.marker_key(intake.marker_file)
    ]
    try:
        with Session(engine) as session, session.begin():
            session.add(submission)
            session.flush()
            session.add_all([*rows, *seen])
            session.flush()
            checkpoint("registrar.rows_flushed")
    except IntegrityError:
        # Another registrar committed the same content first: that submission is the one.
        return _by_content(engine, group.grouping_key, content_hash, new_files), False
    checkpoint("registrar.committed")
    return submission_id, True


def _by_content(engine: Engine, grouping_key: str, content_hash: str, new_files: Sequence[ClassifiedFile]) -> str:
    with Session(engine) as session:
        submission_id = session.scalar(
            select(Submission.submission_id).where(
                Submission.grouping_key == grouping_key, Submission.content_hash == content_hash
            )
        )
        if submission_id is None:
            known = already_registered(session, new_files)
            raise WorkerError(
                f"{len(known)} of these files were registered concurrently into another submission; "
                "re-run to register what remains"
            )
        return submission_id


def _previous(engine: Engine, grouping_key: str) -> str | None:
    with Session(engine) as session:
        return session.scalar(
            select(Submission.submission_id)
            .where(Submission.grouping_key == grouping_key)
            .order_by(Submission.id.desc())
        )


def _file_row(submission_id: str, raw_prefix: str, group: Group, f: ClassifiedFile, sha256: str) -> SubmissionFile:
    return SubmissionFile(
        submission_id=submission_id,
        inbox_key=f.key,
        raw_key=raw_prefix + relative_path(f.key, group.grouping_key),
        size_bytes=f.size,
        sha256=sha256,
        etag=f.etag,
        file_type=f.file_type,
        layout_id=f.layout_id,
        layout_version=f.layout_version,
        classification=f.classification,
        classification_detail=f.detail[:1000],
    )


def _seen_row(submission_id: str, obj: InboxObject, data_keys: set[str]) -> InboxObjectRow:
    return InboxObjectRow(
        submission_id=submission_id,
        key=obj.key,
        size_bytes=obj.size,
        etag=obj.etag,
        last_modified=obj.last_modified,
        role="data" if obj.key in data_keys else "marker",
    )


def hash_files(s3: S3Client, bucket: str, files: Sequence[ClassifiedFile]) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        digests = pool.map(lambda f: sha256_of(s3, bucket, f.key, f.etag), files)
        return {f.key: digest for f, digest in zip(files, digests, strict=True)}


def submission_row(session: Session, submission_id: str) -> Submission:
    submission = session.scalar(select(Submission).where(Submission.submission_id == submission_id))
    return submission if submission is not None else _missing(submission_id)


def _missing(submission_id: str) -> NoReturn:
    raise WorkerError(f"submission {submission_id} is not in the metadata DB")


def load_manifest(engine: Engine, submission_id: str) -> tuple[Submission, Manifest]:
    with Session(engine) as session:
        submission = submission_row(session, submission_id)
        files = session.scalars(select(SubmissionFile).where(SubmissionFile.submission_id == submission_id)).all()
        session.expunge_all()
    manifest = Manifest(
        submission_id=submission.submission_id,
        submitter_id=submission.submitter_id,
        file_type=submission.file_type,
        grouping_key=submission.grouping_key,
        grouping_method=submission.grouping_method,
        previous_submission_id=submission.previous_submission_id,
        duplicate_of=submission.duplicate_of,
        files=tuple(
            ManifestFile(
                inbox_key=f.inbox_key,
                raw_key=f.raw_key,
                size_bytes=f.size_bytes,
                sha256=f.sha256,
                etag=f.etag,
                file_type=f.file_type,
                layout_id=f.layout_id,
                layout_version=f.layout_version,
                classification=f.classification,
                classification_detail=f.classification_detail,
            )
            for f in files
        ),
    )
    return submission, manifest


def ensure_manifest(
    engine: Engine, s3: S3Client, bucket: str, submission_id: str, retention: RetentionSettings | None = None
) -> Manifest:
    """Write the manifest create-only and locked (Object Lock), and record its version; an
    existing one must be byte-identical, and gets the lock if it lacks it."""
    submission, manifest = load_manifest(engine, submission_id)
    if submission.manifest_written_at is not None:
        return manifest
    retention = retention or load_retention_settings()
    body = manifest.to_bytes()
    key = submission.manifest_key
    try:
        # Locked from its first instant; `protect` below dates the lock from the version itself.
        locked = raw_zone.put_arguments(raw_zone.wanted(retention, utcnow()))
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            IfNoneMatch="*",
            ContentType="application/json",
            **locked,  # type: ignore[arg-type]
        )
    except ClientError as exc:
        if error_code(exc) not in PRECONDITION_FAILED:
            raise
    # Ours, or written by an earlier, interrupted run: the same bytes, or a refusal.
    existing = s3.get_object(Bucket=bucket, Key=key)
    if existing["Body"].read() != body:
        raise WorkerError(f"a different manifest already exists at {key}; refusing to overwrite")
    checkpoint("registrar.manifest_put")
    version_id = existing["VersionId"]
    lock = raw_zone.protect(s3, bucket, key, version_id, raw_zone.wanted(retention, existing["LastModified"]))
    checkpoint("registrar.retention_set")
    version = raw_zone.RawVersion(
        submission_id, "manifest", "manifest", key, version_id, hashlib.sha256(body).hexdigest(), len(body), lock
    )

    def mark_written(session: Session) -> None:
        row = submission_row(session, submission_id)
        row.manifest_written_at = row.manifest_written_at or utcnow()

    raw_zone.record_with(engine, [version], mark_written)
    checkpoint("registrar.manifest_recorded")
    return manifest


def report(engine: Engine, manifest: Manifest, created: bool) -> Metadata:
    with Session(engine) as session:
        submission = submission_row(session, manifest.submission_id)
        status, raw_prefix, manifest_key = submission.status, submission.raw_prefix, submission.manifest_key
    return {
        "submission_id": manifest.submission_id,
        "created": created,
        "status": status,
        "submitter_id": manifest.submitter_id,
        "file_type": manifest.file_type,
        "group_id": group_id(manifest.grouping_key),
        "grouping_method": manifest.grouping_method,
        "previous_submission_id": manifest.previous_submission_id or "",
        "duplicate_of": manifest.duplicate_of or "",
        "file_count": len(manifest.files),
        "total_bytes": sum(f.size_bytes for f in manifest.files),
        "raw_prefix": raw_prefix,
        "manifest_key": manifest_key,
        "file_table": [
            {
                "file_id": file_id(f.inbox_key),
                "size_bytes": f.size_bytes,
                "sha256": f.sha256,
                "classification": f.classification,
                "file_type": f.file_type,
            }
            for f in manifest.files
        ],
    }


def work(settings: Settings, params: Mapping[str, Any]) -> Metadata:
    intake = load_intake_settings()
    group = group_from_params(params, intake)
    records = params.get("files")
    if records is None:
        # Standalone runs classify the group first, as the job's op does before launching us.
        files = classifier.classify(settings, group, intake)
    elif isinstance(records, list):
        files = [ClassifiedFile.from_record(record) for record in records]
    else:
        raise WorkerError(f"files must be a list of classified files, not {type(records).__name__}")
    with metadata_engine(settings.metadata_db_url) as engine:
        return register(
            engine=engine,
            s3=make_s3_client(settings),
            bucket=settings.bucket,
            intake=intake,
            group=group,
            grouping_method=params.get("grouping_method") or discovery.MARKER,
            files=files,
        )


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):
        parser.add_argument("--grouping-key", dest="grouping_key", help="required; e.g. inbox/acme/unknown/drop-001/")
        parser.add_argument(
            "--grouping-method",
            dest="grouping_method",
            default=discovery.MARKER,
            choices=get_args(discovery.GroupingMethodInput),
        )

    return run_worker("registrar", work, argv, arguments, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
