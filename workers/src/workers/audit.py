"""Raw zone audit: holds the newest staged submissions to the versions recorded when they were
written (`raw_object`), never to whatever sits at a key now. Read-only. Runs in the stager's
image; Dagster runs it as the `raw_copies_match_manifests` asset check of `raw_zone`.

Per recorded version (each data file and the manifest) it reports, by submission and file id:
- `overwritten`: a later version sits at the key (the recorded one may still be readable by id);
- `hidden`: a delete marker hides the key;
- `missing`: the recorded version is gone from the store;
- `bytes_differ`: the recorded version's bytes are not the registered SHA-256;
- `unprotected`: the version's lock is weaker than recorded, or gone;
- `unrecorded`: a staged file or a manifest has no recorded version;
- `manifest_differs`: the recorded manifest does not describe the registered files.
A raw file and its manifest rewritten to agree with each other are both flagged: each is a
later version than the one recorded.

By hand it exits 1 when it finds anything (its report printed all the same), 0 when it passed.

With `--stuck` it reports the drops stuck past STUCK_AFTER_MINUTES instead (workers.recovery):
the `no_stuck_drops` check of `inbox`, when an operator runs it from the UI (the sweeper
records the same verdict on every change). With `--feeds` it judges the expected deliveries
(workers.feeds): the `feed_*` checks of `submissions`, run from the UI (feed_freshness_sensor
records the same verdicts on every change).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, timedelta
from typing import Any

from botocore.exceptions import ClientError
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from workers import feeds
from workers.db import RawObject, Submission, SubmissionFile, metadata_engine, utcnow
from workers.inbox import file_id
from workers.manifest import Manifest
from workers.raw_zone import Lock, current_version, lock_of
from workers.recovery import stuck_drops
from workers.runtime import Metadata, run_worker
from workers.settings import Settings, load_recovery_settings
from workers.store import NOT_FOUND, READ_CHUNK, S3Client, bare, error_code, make_s3_client

DEFAULT_LIMIT = 50
MANIFEST = "manifest"  # the file id findings about a manifest carry
GONE = (*NOT_FOUND, "NoSuchVersion")


@dataclass(frozen=True)
class Finding:
    submission_id: str
    file_id: str  # a data file's id, or "manifest"
    finding: str
    detail: str


def newest_staged(engine: Engine, limit: int) -> list[str]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(Submission.submission_id)
                .where(Submission.status == "staged")
                .order_by(Submission.id.desc())
                .limit(limit)
            )
        )


def audit(*, engine: Engine, s3: S3Client, bucket: str, limit: int) -> Metadata:
    findings: list[Finding] = []
    files = 0
    submissions = newest_staged(engine, limit)
    for submission_id in submissions:
        with Session(engine) as session:
            submission = session.scalar(select(Submission).where(Submission.submission_id == submission_id))
            rows = session.scalars(select(SubmissionFile).where(SubmissionFile.submission_id == submission_id)).all()
            recorded = {
                r.key: r for r in session.scalars(select(RawObject).where(RawObject.submission_id == submission_id))
            }
            session.expunge_all()
        assert submission is not None  # listed just above; submissions are never deleted
        manifest = recorded.get(submission.manifest_key)
        if manifest is None:
            findings.append(Finding(submission_id, MANIFEST, "unrecorded", "the manifest has no recorded version"))
        else:
            body, problems = check_version(s3, bucket, manifest, keep_body=True)
            findings += [Finding(submission_id, MANIFEST, *problem) for problem in problems]
            if body is not None:
                findings += manifest_findings(submission_id, body, rows)
        for row in rows:
            files += 1
            which = file_id(row.inbox_key)
            version = recorded.get(row.raw_key)
            if version is None:
                findings.append(Finding(submission_id, which, "unrecorded", "the staged copy has no recorded version"))
                continue
            if version.sha256 != row.sha256:
                findings.append(
                    Finding(submission_id, which, "bytes_differ", "recorded version is not the registered SHA-256")
                )
            findings += [Finding(submission_id, which, *problem) for problem in check_version(s3, bucket, version)[1]]
    return {
        "passed": not findings,
        "submissions_checked": len(submissions),
        "files_checked": files,
        "findings": len(findings),
        "finding_table": [asdict(f) for f in findings[:50]],
    }


def check_version(
    s3: S3Client, bucket: str, recorded: RawObject, keep_body: bool = False
) -> tuple[bytes | None, list[tuple[str, str]]]:
    """(the recorded version's bytes when asked for and readable, the problems found)."""
    problems: list[tuple[str, str]] = []
    key, version_id = recorded.key, recorded.version_id
    current = current_version(s3, bucket, key)
    if current is None:
        if delete_marker_on(s3, bucket, key):
            problems.append(("hidden", "a delete marker hides the key"))
    elif current != version_id:
        problems.append(("overwritten", "a later version sits at the key"))
    try:
        response = s3.get_object(Bucket=bucket, Key=key, VersionId=version_id)
    except ClientError as exc:
        if error_code(exc) not in GONE:
            raise
        problems.append(("missing", "the recorded version is gone from the store"))
        return None, problems
    digest, body = hashlib.sha256(), bytearray()
    for chunk in response["Body"].iter_chunks(READ_CHUNK):
        digest.update(chunk)
        if keep_body:
            body += chunk
    if digest.hexdigest() != recorded.sha256:
        problems.append(("bytes_differ", "the recorded version's bytes are not the recorded SHA-256"))
    want = Lock(recorded.retention_mode, recorded.retain_until.astimezone(UTC), recorded.legal_hold)
    have = lock_of(s3, bucket, key, version_id)
    if have is None or not have.covers(want):
        problems.append(("unprotected", f"locked {describe(have)}, recorded {describe(want)}"))
    return (bytes(body) if keep_body else None), problems


def describe(lock: Lock | None) -> str:
    if lock is None:
        return "not at all"
    hold = " with legal hold" if lock.legal_hold else ""
    return f"{lock.mode} until {lock.retain_until.isoformat(timespec='seconds')}{hold}"


def delete_marker_on(s3: S3Client, bucket: str, key: str) -> bool:
    """A delete marker is the key's latest version (not every store says so on a HEAD's 404)."""
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return any(m["Key"] == key and m.get("IsLatest") for m in listed.get("DeleteMarkers", ()))


def manifest_findings(submission_id: str, body: bytes, rows) -> list[Finding]:
    """The recorded manifest against the registered files, file by file."""
    try:
        manifest = Manifest.from_bytes(body)
    except (ValueError, KeyError, TypeError) as exc:
        return [Finding(submission_id, MANIFEST, "manifest_differs", f"unreadable: {type(exc).__name__}")]
    in_manifest = {(f.inbox_key, f.raw_key, f.size_bytes, f.sha256, bare(f.etag)) for f in manifest.files}
    in_db = {(f.inbox_key, f.raw_key, f.size_bytes, f.sha256, bare(f.etag)) for f in rows}
    differing = sorted({file_id(entry[0]) for entry in in_manifest ^ in_db})
    detail = "the recorded manifest does not describe this file as registered"
    return [Finding(submission_id, which, "manifest_differs", detail) for which in differing]


def stuck_report(engine: Engine, stuck_after: timedelta) -> Metadata:
    stuck = stuck_drops(engine, utcnow(), stuck_after)
    rows = [{**asdict(s), "since": s.since.isoformat(timespec="seconds")} for s in stuck[:50]]
    return {"passed": not stuck, "stuck_drops": len(stuck), "stuck_table": rows}


def work(settings: Settings, params: Mapping[str, Any]) -> Metadata:
    with metadata_engine(settings.metadata_db_url) as engine:
        if params.get("stuck"):
            return stuck_report(engine, timedelta(minutes=load_recovery_settings().stuck_after_minutes))
        if params.get("feeds"):
            return feeds.report(engine, feeds.packaged_feeds())
        limit = int(params.get("limit") or DEFAULT_LIMIT)
        return audit(engine=engine, s3=make_s3_client(settings), bucket=settings.bucket, limit=limit)


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):
        parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="newest N staged submissions")
        parser.add_argument("--stuck", action="store_true", help="report drops stuck past STUCK_AFTER_MINUTES instead")
        parser.add_argument("--feeds", action="store_true", help="judge the expected deliveries (feeds) instead")

    verdicts: list[bool] = []

    def judged(settings: Settings, params: Mapping[str, Any]) -> Metadata:
        report = work(settings, params)
        verdicts.append(bool(report["passed"]))
        return report

    code = run_worker("audit", judged, argv, arguments, description=__doc__)
    # By hand, a finding is exit 1 (the report is printed all the same); under Pipes the check
    # reads the verdict from the report, and the process succeeds.
    by_hand = "--pipes" not in (sys.argv[1:] if argv is None else argv)
    return 1 if code == 0 and by_hand and not all(verdicts) else code


if __name__ == "__main__":
    sys.exit(main())
