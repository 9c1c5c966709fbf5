"""Raw zone audit: re-reads the staged objects of the newest staged submissions and compares each
with its manifest's SHA-256. Read-only. Runs in the stager's image; Dagster runs it as the
`raw_copies_match_manifests` asset check of `raw_zone`.

With `--stuck` it reports the drops stuck past STUCK_AFTER_MINUTES instead (workers.recovery):
the `no_stuck_drops` check of `inbox`, when an operator runs it from the UI (the sweeper
records the same verdict on every change).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from workers.db import Submission, metadata_engine, utcnow
from workers.inbox import file_id
from workers.manifest import Manifest
from workers.recovery import stuck_drops
from workers.runtime import Metadata, run_worker
from workers.settings import Settings, load_recovery_settings
from workers.store import NOT_FOUND, S3Client, error_code, make_s3_client, sha256_of

DEFAULT_LIMIT = 50


def newest_staged(engine: Engine, limit: int) -> list[tuple[str, str]]:
    with Session(engine) as session:
        rows = session.execute(
            select(Submission.submission_id, Submission.manifest_key)
            .where(Submission.status == "staged")
            .order_by(Submission.id.desc())
            .limit(limit)
        )
        return [tuple(row) for row in rows]


def audit(*, engine: Engine, s3: S3Client, bucket: str, limit: int) -> Metadata:
    mismatches: list[dict[str, str]] = []
    files = 0
    submissions = newest_staged(engine, limit)
    for submission_id, manifest_key in submissions:
        manifest = Manifest.from_bytes(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
        for entry in manifest.files:
            files += 1
            found = _sha256_or_missing(s3, bucket, entry.raw_key)
            if found != entry.sha256:
                mismatches.append({"submission_id": submission_id, "file_id": file_id(entry.inbox_key), "found": found})
    return {
        "passed": not mismatches,
        "submissions_checked": len(submissions),
        "files_checked": files,
        "mismatches": len(mismatches),
        "mismatch_table": mismatches[:50],
    }


def _sha256_or_missing(s3: S3Client, bucket: str, key: str) -> str:
    try:
        return sha256_of(s3, bucket, key)
    except Exception as exc:  # noqa: BLE001 - a missing object is a finding, anything else a failure
        if getattr(exc, "response", None) and error_code(exc) in NOT_FOUND:
            return "missing"
        raise


def stuck_report(engine: Engine, stuck_after: timedelta) -> Metadata:
    stuck = stuck_drops(engine, utcnow(), stuck_after)
    rows = [{**asdict(s), "since": s.since.isoformat(timespec="seconds")} for s in stuck[:50]]
    return {"passed": not stuck, "stuck_drops": len(stuck), "stuck_table": rows}


def work(settings: Settings, params: Mapping[str, Any]) -> Metadata:
    with metadata_engine(settings.metadata_db_url) as engine:
        if params.get("stuck"):
            return stuck_report(engine, timedelta(minutes=load_recovery_settings().stuck_after_minutes))
        limit = int(params.get("limit") or DEFAULT_LIMIT)
        return audit(engine=engine, s3=make_s3_client(settings), bucket=settings.bucket, limit=limit)


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):
        parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="newest N staged submissions")
        parser.add_argument("--stuck", action="store_true", help="report drops stuck past STUCK_AFTER_MINUTES instead")

    return run_worker("audit", work, argv, arguments, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
