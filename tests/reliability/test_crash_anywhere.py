"""SIGKILL the registrar and the stager at every crash point of a multi-file submission, then re-run.

Each trial crashes a real worker process at one exact (point, pass) — `workers/faults.py` — and
then re-runs the interrupted worker and the rest of the flow. Afterwards every file must be
staged exactly once with its checksum verified, its version locked and recorded (and no other
version beside it), the manifest whole, matching, locked and recorded, no duplicate row and no
inbox copy, old version or delete marker left behind. Postgres only: it is the production database, and the
SQLite paths are the same code.
"""

import os
import random
import signal

import pytest

from tests.helpers import drop_files, result_of, run_worker, staged_state

SEED = int(os.environ.get("RELIABILITY_SEED", "20261128"))
FILES = 6
STAGER_POINTS = (
    [f"stager.copied:{n}" for n in range(1, FILES + 1)]
    + [f"stager.retention_set:{n}" for n in range(1, FILES + 1)]
    + [f"stager.verified:{n}" for n in range(1, FILES + 1)]
    + [f"stager.marked:{n}" for n in range(1, FILES + 1)]
    + ["stager.files_marked:1", "stager.submission_staged:1"]
    + [f"stager.inbox_deleted:{n}" for n in range(1, FILES + 2)]
)
REGISTRAR_POINTS = [
    "registrar.hashed:1",
    "registrar.rows_flushed:1",
    "registrar.committed:1",
    "registrar.manifest_put:1",
    "registrar.retention_set:1",
    "registrar.manifest_recorded:1",
]


def files_for(rng: random.Random) -> dict[str, bytes]:
    names = [
        "medical_claims.csv",
        "medical_claims_2.csv",
        "eligibility.csv",
        "notes/readme.txt",
        "lab 1.hl7",
        "x+y.bin",
    ]
    return {name: rng.randbytes(rng.choice([0, 1, 1000, 70_000, 300_000])) for name in names[:FILES]}


def crash_then_finish(env: dict[str, str], group: str, point: str) -> None:
    registrar_args = ("--grouping-key", group)
    if point.startswith("registrar."):
        crashed = run_worker(env, "registrar", *registrar_args, crash_at=point)
        assert crashed.returncode == -signal.SIGKILL, f"{point} was never reached: {crashed.stderr[-1000:]}"
    submission = result_of(run_worker(env, "registrar", *registrar_args))["submission_id"]
    if point.startswith("stager."):
        crashed = run_worker(env, "stager", "--submission-id", submission, crash_at=point)
        assert crashed.returncode == -signal.SIGKILL, f"{point} was never reached: {crashed.stderr[-1000:]}"
    result_of(run_worker(env, "stager", "--submission-id", submission))


def test_every_crash_point_ends_with_each_file_staged_exactly_once(pg_platform, s3_server, ledger):
    rng = random.Random(SEED)
    points = STAGER_POINTS + REGISTRAR_POINTS
    rng.shuffle(points)
    assert len(points) >= 20
    s3 = s3_server.client()
    for trial, point in enumerate(points):
        group = f"inbox/acme/unknown/crash-{trial:02d}/"
        files = files_for(rng)
        drop_files(s3, pg_platform["MINIO_BUCKET"], group, files)

        crash_then_finish(pg_platform, group, point)

        state = staged_state(pg_platform, s3, group, {name: body for name, body in files.items()})
        ledger.update(crash_trials=1, files_checked=state["files_checked"])
        ledger.update(files_lost=state["files_lost"], files_duplicated=state["files_duplicated"])
        ledger.points.add(point)
        wrong = state["raw_unrecorded"] + state["raw_unprotected"] + state["raw_extra_versions"]
        ledger.update(raw_versions_checked=state["raw_versions_checked"], raw_versions_wrong=wrong)
        ledger.update(inbox_versions_left=state["inbox_versions_left"])
        assert (state["submissions"], state["staged_submissions"]) == (1, 1), (point, state)
        assert (state["files_lost"], state["files_duplicated"]) == (0, 0), (point, state)
        assert state["manifests_ok"], point
        assert (state["inbox_left"], state["inbox_rows_unremoved"]) == (0, 0), (point, state)
        assert (state["raw_unrecorded"], state["raw_unprotected"], state["raw_extra_versions"]) == (0, 0, 0), (
            point,
            state,
        )
        assert state["inbox_versions_left"] == 0, (point, state)
        ledger.update(crashes_survived=1)


@pytest.mark.parametrize("point", ["stager.copied:1", "registrar.rows_flushed:1"])
def test_a_crash_point_that_is_set_really_kills_the_worker(pg_platform, s3_server, point):
    """Guards the suite itself: if checkpoints stopped firing, every trial above would pass vacuously."""
    group = "inbox/acme/unknown/guard/"
    drop_files(s3_server.client(), pg_platform["MINIO_BUCKET"], group, {"medical_claims.csv": b"a\n"})
    if point.startswith("stager."):
        submission = result_of(run_worker(pg_platform, "registrar", "--grouping-key", group))["submission_id"]
        done = run_worker(pg_platform, "stager", "--submission-id", submission, crash_at=point)
    else:
        done = run_worker(pg_platform, "registrar", "--grouping-key", group, crash_at=point)
    assert done.returncode == -signal.SIGKILL
