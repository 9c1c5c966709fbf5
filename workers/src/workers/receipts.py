"""Receipts to partners: what became of a drop, at `outbox/{submitter_id}/{drop_id}/{receipt_id}.receipt.json`.

Written create-only (`If-None-Match: *`) by the stager once a submission is staged and its inbox
cleaned, and by the registrar for a duplicate and for rejected objects that no submission holds.
A receipt is built from the metadata DB alone, so a re-run rebuilds the same bytes; one already
there is never overwritten. Its format is `docs/receipt.schema.json` (README "Receipts to partners").

A receipt names files by the partner's own names within their drop: it is an object in the
partner's own outbox, readable by their role and the platform's writers only, not a log. It never
holds file contents. Outside the object store a receipt is named by its id, never by its key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from workers.db import InboxObject, InboxRejection, Submission, SubmissionFile
from workers.inbox import Group, file_id, fingerprint, relative_path
from workers.inbox import InboxObject as ListedObject
from workers.runtime import Metadata
from workers.store import PRECONDITION_FAILED, S3Client, error_code

OUTBOX_PREFIX = "outbox/"
RECEIPT_VERSION = 1
SUFFIX = ".receipt.json"


@dataclass(frozen=True)
class Receipt:
    receipt_id: str
    submitter_id: str
    drop_id: str
    body: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{OUTBOX_PREFIX}{self.submitter_id}/{self.drop_id}/{self.receipt_id}{SUFFIX}"

    def to_bytes(self) -> bytes:
        return (json.dumps(self.body, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def platform_version() -> str:
    try:
        return metadata.version("health-workers")
    except metadata.PackageNotFoundError:
        return "unknown"


def timestamp(moment: datetime | None) -> str | None:
    """UTC, to the second; SQLite hands back naive datetimes, which are UTC here."""
    if moment is None:
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def drop_of(grouping_key: str) -> str:
    return Group(grouping_key, "", "").drop_id


def rejection_id(grouping_key: str, rejected: Sequence[ListedObject]) -> str:
    """A receipt for rejected objects no submission holds: named like a submission, from the same
    group and content, so a re-run names it alike and another content gets a receipt of its own."""
    return "rej-" + hashlib.sha256(f"{grouping_key}\0{fingerprint(rejected)}".encode()).hexdigest()[:24]


def for_submission(engine: Engine, submission_id: str) -> Receipt:
    """A staged submission's or a duplicate's receipt, from what the metadata DB holds."""
    with Session(engine) as session:
        sub = session.scalars(select(Submission).where(Submission.submission_id == submission_id)).one()
        files = session.scalars(select(SubmissionFile).where(SubmissionFile.submission_id == submission_id)).all()
        seen = session.scalars(select(InboxObject.last_modified).where(InboxObject.submission_id == submission_id))
        received = max((moment for moment in seen if moment is not None), default=None)
        original = session.scalar(select(Submission.grouping_key).where(Submission.submission_id == sub.duplicate_of))
        rejections = _rejections_since_previous(session, sub)
    duplicate_of = None
    if sub.duplicate_of:
        duplicate_of = {"submission_id": sub.duplicate_of, "drop_id": drop_of(original) if original else None}
    body = _body(sub.submission_id, "duplicate" if sub.duplicate_of else sub.status, sub.submitter_id, sub.grouping_key)
    body.update(
        submission_id=sub.submission_id,
        file_type=sub.file_type,
        received_at=timestamp(received),
        registered_at=timestamp(sub.created_at),
        staged_at=timestamp(sub.staged_at),
        duplicate_of=duplicate_of,
        files=[_file(f, sub.grouping_key) for f in sorted(files, key=lambda f: f.inbox_key)],
        rejections=[_rejection(r) for r in rejections],
    )
    return Receipt(sub.submission_id, sub.submitter_id, drop_of(sub.grouping_key), body)


def for_rejections(engine: Engine, group: Group, rejected: Sequence[ListedObject]) -> Receipt:
    """A receipt for a group's rejected objects that no submission holds (e.g. a marker alone)."""
    receipt_id = rejection_id(group.grouping_key, rejected)
    wanted = {(obj.key, obj.etag) for obj in rejected}
    with Session(engine) as session:
        rows = session.scalars(
            select(InboxRejection).where(InboxRejection.grouping_key == group.grouping_key).order_by(InboxRejection.key)
        ).all()
    received = max((obj.last_modified for obj in rejected if obj.last_modified), default=None)
    body = _body(receipt_id, "rejected", group.submitter_id, group.grouping_key)
    body.update(
        submission_id=None,
        file_type=None,
        received_at=timestamp(received),
        registered_at=None,
        staged_at=None,
        duplicate_of=None,
        files=[],
        rejections=[_rejection(r) for r in rows if (r.key, r.etag) in wanted],
    )
    return Receipt(receipt_id, group.submitter_id, group.drop_id, body)


def _body(receipt_id: str, outcome: str, submitter_id: str, grouping_key: str) -> dict[str, Any]:
    return {
        "receipt_version": RECEIPT_VERSION,
        "receipt_id": receipt_id,
        "outcome": outcome,
        "submitter_id": submitter_id,
        "drop_id": drop_of(grouping_key),
        "platform_version": platform_version(),
    }


def _file(f: SubmissionFile, grouping_key: str) -> dict[str, Any]:
    return {
        "name": relative_path(f.inbox_key, grouping_key),
        "file_id": file_id(f.inbox_key),
        "size_bytes": f.size_bytes,
        "sha256": f.sha256,
        "file_type": f.file_type,
        "layout_id": f.layout_id,
        "layout_version": f.layout_version,
        "classification": f.classification,
        "classification_detail": f.classification_detail,
    }


def _rejection(row: InboxRejection) -> dict[str, Any]:
    return {
        "name": relative_path(row.key, row.grouping_key or ""),
        "file_id": file_id(row.key),
        "size_bytes": row.size_bytes,
        "reason": row.reason,
        "rejected_at": timestamp(row.first_seen_at),
    }


def _rejections_since_previous(session: Session, sub: Submission) -> list[InboxRejection]:
    """The group's rejections its registration recorded: after the group's previous submission
    (a late file's receipt does not repeat an earlier one's), up to this one. Fixed once this
    submission exists, so a re-run rebuilds the same receipt."""
    query = select(InboxRejection).where(
        InboxRejection.grouping_key == sub.grouping_key, InboxRejection.first_seen_at <= sub.created_at
    )
    if sub.previous_submission_id:
        previous = select(Submission.created_at).where(Submission.submission_id == sub.previous_submission_id)
        query = query.where(InboxRejection.first_seen_at > previous.scalar_subquery())
    return list(session.scalars(query.order_by(InboxRejection.key)))


def put_create_only(s3: S3Client, bucket: str, receipt: Receipt) -> str:
    """ "written"; "already_there" (the same bytes, an earlier run's); "kept_different" (other
    bytes, e.g. written by an earlier platform version: never overwritten). Store errors propagate."""
    body = receipt.to_bytes()
    try:
        s3.put_object(Bucket=bucket, Key=receipt.key, Body=body, IfNoneMatch="*", ContentType="application/json")
        return "written"
    except ClientError as exc:
        if error_code(exc) not in PRECONDITION_FAILED:
            raise
    existing = s3.get_object(Bucket=bucket, Key=receipt.key)["Body"].read()
    return "already_there" if existing == body else "kept_different"


def deliver(s3: S3Client, bucket: str, receipt: Receipt) -> Metadata:
    """Put the receipt, failing safe: a store error is reported (the worker's next run for the same
    submission or content puts it again), never raised, so nothing already recorded is undone.
    Reported by id only: the key holds the partner's drop folder name."""
    try:
        status, error = put_create_only(s3, bucket, receipt), ""
    except ClientError as exc:
        status, error = "failed", error_code(exc)
    except BotoCoreError as exc:
        status, error = "failed", type(exc).__name__
    return {"receipt_id": receipt.receipt_id, "receipt": status, "receipt_error": error}
