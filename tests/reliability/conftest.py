"""Shared by the reliability suite: a Postgres-backed platform, worker processes, and the ledger
from which docs/reliability.md is written at the end of every session that ran these tests."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from workers.db import make_engine
from workers.manifest import Manifest

from tests.conftest import REPO, migrate, platform_environment
from workers import layouts

REPORT = REPO / "docs" / "reliability.md"


class Ledger(Counter):
    """Counts what the suite tried and found; rendered into docs/reliability.md."""

    def __init__(self) -> None:
        super().__init__()
        self.points: set[str] = set()
        self.bad_inputs: list[tuple[str, str, str]] = []  # case, key, outcome
        self.servers: set[str] = set()  # the S3 servers the immutability tests ran against
        self.convergence: list[tuple[str, float]] = []  # scenario, seconds until the drop was staged


@pytest.fixture(scope="session")
def ledger():
    counts = Ledger()
    yield counts
    # Only a run of the whole reliability suite rewrites the report; a partial run would misstate it.
    kinds = ("crash_trials", "concurrent_registrations", "overlapping_ticks", "outages_survived", "secrets_scans")
    if all(counts[kind] for kind in kinds):
        if counts.bad_inputs:
            write_report(counts)


def write_report(counts: Ledger) -> None:
    rows = [
        ("crash trials (SIGKILL at a distinct point, then re-run)", counts["crash_trials"]),
        ("crashes survived (every invariant held after the re-run)", counts["crashes_survived"]),
        ("concurrent registrations (processes racing for one group)", counts["concurrent_registrations"]),
        (
            "sensor ticks evaluated again over the same cursor (sequentially or concurrently)",
            counts["overlapping_ticks"],
        ),
        ("runs Dagster created twice for one run key (concurrent ticks; registered once)", counts["duplicate_runs"]),
        ("outages survived (object store or database down)", counts["outages_survived"]),
        ("bad inputs tried", counts["bad_inputs"]),
        ("raw overwrites attempted and refused by the server", counts["overwrites_refused"]),
        ("drops converged after the whole orchestrator was killed mid-run", counts["orchestrator_kills_converged"]),
        ("drops converged after the object store was down past every retry", counts["outages_converged"]),
        ("poison drops stopped at the retry limit, shown as needing attention", counts["poison_drops_held"]),
        ("files checked after faults", counts["files_checked"]),
        ("files lost", counts["files_lost"]),
        ("files duplicated", counts["files_duplicated"]),
        ("secrets or PHI sentinels found outside the object store", counts["secrets_found"]),
    ]
    lines = [
        "# Reliability report",
        "",
        "Written by the test suite (`tests/reliability/`) at the end of its last full run; do not edit by hand.",
        f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node() or 'a'} "
        f"({platform.machine()}, Python {platform.python_version()}), real SeaweedFS S3 and Postgres 15.",
        "",
        "| what | count |",
        "| --- | ---: |",
        *[f"| {what} | {count} |" for what, count in rows],
        "",
        "Files lost, files duplicated and secrets found must be 0; the tests fail otherwise.",
        "",
        "Crash points (`workers/faults.py`, point:pass): " + ", ".join(sorted(counts.points)),
        "",
        "Create-only raw writes verified against: "
        + (", ".join(sorted(counts.servers)) or "no server")
        + ". MinIO could not be run here (see tests/reliability/test_immutability.py).",
        "",
    ]
    if counts.convergence:
        lines += ["## Convergence: time until the drop was staged and its inbox cleaned, with no human action", ""]
        lines += ["| scenario | seconds |", "| --- | ---: |"]
        lines += [f"| {what} | {seconds:.0f} |" for what, seconds in counts.convergence]
        lines += ["", "Measured from the restart (orchestrator killed) or from the object store's return (outage).", ""]
    if counts.bad_inputs:
        lines += ["## Bad inputs and their recorded outcomes", "", "| case | key | outcome |", "| --- | --- | --- |"]
        lines += [f"| {case} | `{shorten(key)}` | {outcome} |" for case, key, outcome in counts.bad_inputs]
        lines.append("")
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(lines))


def shorten(key: str) -> str:
    shown = key if len(key) <= 60 else key[:28] + "…" + key[-28:]
    return repr(shown)[1:-1].replace("|", "\\|").replace("`", "'")


@pytest.fixture
def pg_platform(monkeypatch, postgres_url, s3_server, bucket) -> dict[str, str]:
    """The platform environment on Postgres (the production database), layouts synced."""
    migrate(postgres_url)
    engine = make_engine(postgres_url)
    layouts.sync(engine, layouts.parse_definitions(layouts.packaged_definitions())[1])
    engine.dispose()
    env = platform_environment(postgres_url, s3_server, bucket)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


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
    engine.dispose()
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
    }


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
