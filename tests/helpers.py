"""Helpers the tests share that are neither fixtures nor services (those are in tests/conftest.py
and tests/services.py): dropping files into the inbox, running workers and checking what they
left, reading a Dagster result, the raw-zone audit, and the object-store roles' keys.

Dagster and the orchestrator are imported where they are used, so a test of the workers alone
does not load them.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session

from workers import roles
from workers.catalogue import WORKERS, Worker
from workers.db import RawObject, Submission
from workers.manifest import Manifest
from workers.raw_zone import Lock, lock_of

if TYPE_CHECKING:
    import dagster as dg


# --- The inbox -----------------------------------------------------------------------------------


def drop_files(s3, bucket: str, grouping_key: str, files: dict[str, bytes], marker: str | None = "_SUCCESS") -> None:
    """Puts files into the inbox as a partner would, then the completion marker."""
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=grouping_key + name, Body=body)
    if marker:
        s3.put_object(Bucket=bucket, Key=grouping_key + marker, Body=b"")


# --- Worker processes, and the invariants they must leave (the reliability suite) ----------------


def run_worker(
    env: dict[str, str], worker: str, *args: str, crash_at: str | None = None
) -> subprocess.CompletedProcess:
    extra = {"WORKER_CRASH_AT": crash_at} if crash_at else {}
    return subprocess.run(
        [sys.executable, "-m", f"workers.{worker}", *args],
        env={**os.environ, **env, **extra},
        capture_output=True,
        text=True,
        timeout=180,
    )


def result_of(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def staged_state(env: dict[str, str], s3, grouping_key: str, expected: dict[str, bytes]) -> dict[str, int]:
    """Checks every invariant for one group; returns counts of files checked, lost and duplicated."""
    engine = sa.create_engine(env["METADATA_DB_URL"])
    bucket = env["MINIO_BUCKET"]
    with engine.connect() as conn:
        subs = conn.execute(
            sa.text("SELECT submission_id, status, manifest_key, raw_prefix FROM submission WHERE grouping_key = :g"),
            {"g": grouping_key},
        ).all()
        files = conn.execute(
            sa.text(
                "SELECT f.inbox_key, f.raw_key, f.sha256, f.staged_at FROM submission_file f "
                "JOIN submission s ON s.submission_id = f.submission_id WHERE s.grouping_key = :g"
            ),
            {"g": grouping_key},
        ).all()
        unremoved = conn.execute(
            sa.text(
                "SELECT count(*) FROM inbox_object o JOIN submission s ON s.submission_id = o.submission_id "
                "WHERE s.grouping_key = :g AND o.removed_at IS NULL"
            ),
            {"g": grouping_key},
        ).scalar()
    with Session(engine) as session:
        recorded = session.scalars(
            sa.select(RawObject)
            .join(Submission, Submission.submission_id == RawObject.submission_id)
            .where(Submission.grouping_key == grouping_key)
        ).all()
    engine.dispose()
    versions = [v for sub in subs for v in list_versions(s3, bucket, sub.raw_prefix)]
    recorded_keys = {r.key for r in recorded}
    staged = {
        f.inbox_key.removeprefix(grouping_key)
        for f in files
        if f.staged_at
        and raw_sha256(s3, bucket, f.raw_key) == f.sha256 == sha(expected[f.inbox_key.removeprefix(grouping_key)])
    }
    raw_objects = [o["Key"] for sub in subs for o in list_all(s3, bucket, sub.raw_prefix)]
    manifests_ok = all(manifest_matches(s3, bucket, sub.manifest_key, files) for sub in subs)
    return {
        "submissions": len(subs),
        "staged_submissions": sum(sub.status == "staged" for sub in subs),
        "files_checked": len(expected),
        "files_lost": len(set(expected) - staged),
        "files_duplicated": len(files)
        - len({f.inbox_key for f in files})
        + max(0, len(raw_objects) - len(files) - len(subs)),
        "manifests_ok": manifests_ok,
        "inbox_left": len(list_all(s3, bucket, grouping_key)),
        "inbox_rows_unremoved": unremoved,
        # The raw zone's write-once record: every staged file and manifest has its version
        # recorded and locked at least as recorded, with no other version beside it; the inbox
        # keeps no old version or delete marker.
        "raw_unrecorded": sum(1 for f in files if f.staged_at and f.raw_key not in recorded_keys)
        + sum(1 for sub in subs if sub.manifest_key not in recorded_keys),
        "raw_unprotected": sum(not locked_as_recorded(s3, bucket, r) for r in recorded),
        "raw_extra_versions": len(versions) - len({v["Key"] for v in versions}),
        "raw_versions_checked": len(recorded),
        "inbox_versions_left": len(list_versions(s3, bucket, grouping_key)),
    }


def list_versions(s3, bucket: str, prefix: str) -> list[dict]:
    """Every version and delete marker under `prefix`."""
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
    return [v for page in pages for kind in ("Versions", "DeleteMarkers") for v in page.get(kind, ())]


def locked_as_recorded(s3, bucket: str, row: RawObject) -> bool:
    have = lock_of(s3, bucket, row.key, row.version_id)
    want = Lock(row.retention_mode, row.retain_until.astimezone(UTC), row.legal_hold)
    return have is not None and have.covers(want)


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def raw_sha256(s3, bucket: str, key: str) -> str | None:
    try:
        return sha(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def list_all(s3, bucket: str, prefix: str) -> list[dict]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj for page in pages for obj in page.get("Contents", ())]


def manifest_matches(s3, bucket: str, key: str, files) -> bool:
    manifest = Manifest.from_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    rows = {(f.raw_key, f.sha256) for f in files}
    return all((entry.raw_key, entry.sha256) in rows for entry in manifest.files)


# --- Dagster results: the heartbeat asset, in either launch mode (tests/orchestrator, tests/docker) -


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    (failure,) = result.get_step_failure_events()
    return failure.step_failure_data.error.message


def reported_heartbeat(result: dg.ExecuteInProcessResult, platform_env) -> dict:
    """The heartbeat's materialization metadata, checked against the row it wrote (however it ran)."""
    (materialization,) = result.asset_materializations_for_node("bootstrap_heartbeat_asset")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    engine = sa.create_engine(platform_env.metadata_db_url)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT id, message FROM bootstrap_heartbeat")).one()
    engine.dispose()
    assert metadata["row_id"] == row.id and row.message == "phase0_ok"
    assert metadata["object_key"] == "bootstrap/hello.txt"
    assert metadata["db_dialect"] == platform_env.db_dialect
    assert metadata["endpoint_host"] == platform_env.endpoint_host
    return metadata


def add_fake_workers(monkeypatch, image: str = "heartbeat") -> None:
    """tests/fake_workers' workers in the catalogue (silent, crashes, echoes, limits)."""
    for name in ("silent", "crashes", "echoes", "limits"):
        monkeypatch.setitem(WORKERS, name, Worker(name, image=image, s3_role="heartbeat", db_role="heartbeat"))


# --- The raw-zone audit -------------------------------------------------------------------------


def run_check() -> dg.AssetCheckEvaluation:
    """The raw_copies_match_manifests asset check, through the launcher and a real audit worker process."""
    import dagster as dg

    from orchestrator.defs.intake.checks import raw_copies_match_manifests, raw_zone
    from orchestrator.defs.resources import WorkerLauncher

    defs = dg.Definitions(
        assets=[raw_zone],
        asset_checks=[raw_copies_match_manifests],
        jobs=[dg.define_asset_job("audit_raw_zone", selection=dg.AssetSelection.checks(raw_copies_match_manifests))],
        resources={"launcher": WorkerLauncher()},
    )
    result = defs.resolve_job_def("audit_raw_zone").execute_in_process()
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


# --- Object-store roles (workers.roles): the keys a roles-enforcing S3 server is set up with ------

BUCKET = "health-raw"
ROOT = ("root-" + secrets.token_hex(6), secrets.token_hex(16))
# Two partners with roles of their own (PARTNER_ROLES): each reads its own outbox/ folder only.
PARTNERS = ("acme", "globex")
ROLE_KEYS = {
    role: (f"{role}-{secrets.token_hex(6)}", secrets.token_hex(16))
    for role in [*roles.GRANTS, *(roles.PARTNER_ROLE + p for p in PARTNERS)]
}


def role_variables() -> dict[str, str]:
    env = {}
    for role, (access, secret) in ROLE_KEYS.items():
        access_name, secret_name = roles.key_variables(role)
        env[access_name], env[secret_name] = access, secret
    return env


def roles_env(endpoint: str = "http://s3:9000", keys: tuple[str, str] = ROOT, **extra: str) -> dict[str, str]:
    """Connection settings with `keys` as the process's own, and every role's keys."""
    return {
        "METADATA_DB_URL": "sqlite://",
        "MINIO_ENDPOINT": endpoint,
        "MINIO_ACCESS_KEY": keys[0],
        "MINIO_SECRET_KEY": keys[1],
        "MINIO_BUCKET": BUCKET,
        "PARTNER_ROLES": ",".join(PARTNERS),
        **role_variables(),
        **extra,
    }


# --- The seed document ---------------------------------------------------------------------------

# The run config as the seed document prints it (its "Run the registration job manually" step);
# examples/register_drop_001.yaml holds it verbatim.
SEED_YAML = """\
ops:
  register_submission_from_group:
    config:
      grouping_key: inbox/acme/unknown/drop-001/
      grouping_method: MARKER_FILE
"""
# The README's example drop, data first and the marker last (its "Try it" step).
DROP = (
    "aws s3 cp examples/drop-001/medical_claims.csv s3://health-raw/inbox/acme/unknown/drop-001/medical_claims.csv",
    "aws s3 cp examples/_SUCCESS s3://health-raw/inbox/acme/unknown/drop-001/_SUCCESS",
)


# --- Submissions as rows -------------------------------------------------------------------------


def add_submission(engine, submission_id: str, file_type: str, created: datetime, status: str = "registered") -> None:
    """One of acme's submissions of `file_type`, registered at `created` (no objects behind it)."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Submission).values(
                submission_id=submission_id,
                submitter_id="acme",
                file_type=file_type,
                grouping_key=f"inbox/acme/{file_type}/{submission_id}/",
                grouping_method="MARKER_FILE",
                content_hash=submission_id.ljust(64, "c"),
                raw_prefix="raw/",
                manifest_key="raw/m",
                file_count=1,
                total_bytes=1,
                status=status,
                created_at=created,
            )
        )
