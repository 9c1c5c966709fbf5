"""The stager against a real S3 server and both metadata databases.

The registered state (inbox objects, submission rows, manifest) is built here directly with the
ORM models and `Manifest`, standing in for the registrar.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError
from sqlalchemy.orm import Session

from workers.db import InboxObject, RawObject, Submission, SubmissionFile, make_engine, utcnow
from workers.inbox import file_id
from workers.manifest import Manifest, ManifestFile, manifest_key_for, raw_prefix_for
from workers.registrar import ensure_manifest
from workers.runtime import WorkerError
from workers.settings import RetentionSettings
from workers.stager import CopyPlan, create_only_copy, stage_submission, work
from workers.store import PRECONDITION_FAILED, make_s3_client

GROUP = "inbox/acme/claims/drop-001/"
MARKER = GROUP + "_SUCCESS"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Registered:
    submission_id: str
    raw_prefix: str
    manifest_key: str
    files: dict[str, bytes]  # raw key -> the bytes registered
    inbox_keys: dict[str, str]  # raw key -> inbox key

    @property
    def raw_keys(self) -> list[str]:
        return sorted(self.files)


@pytest.fixture
def register(platform_env):
    """Put a drop into the inbox and record it as the registrar would: rows, then the manifest."""
    s3 = make_s3_client(platform_env)
    engine = make_engine(platform_env.metadata_db_url)

    def _register(contents: dict[str, bytes], write_manifest: bool = True) -> Registered:
        submission_id = f"sub-{uuid.uuid4().hex[:16]}"
        raw_prefix = raw_prefix_for("raw/", "acme", "claims", submission_id)
        entries = []
        for name, body in sorted(contents.items()):
            etag = s3.put_object(Bucket=platform_env.bucket, Key=GROUP + name, Body=body)["ETag"].strip('"')
            entries.append(
                ManifestFile(
                    inbox_key=GROUP + name,
                    raw_key=raw_prefix + name,
                    size_bytes=len(body),
                    sha256=hashlib.sha256(body).hexdigest(),
                    etag=etag,
                    file_type="claims",
                    layout_id="acme-claims",
                    layout_version=1,
                    classification="classified",
                    classification_detail="",
                )
            )
        marker_etag = s3.put_object(Bucket=platform_env.bucket, Key=MARKER, Body=b"")["ETag"].strip('"')
        manifest = Manifest(submission_id, "acme", "claims", GROUP, "marker", None, tuple(entries))
        with Session(engine) as session, session.begin():
            session.add(
                Submission(
                    submission_id=submission_id,
                    submitter_id="acme",
                    file_type="claims",
                    grouping_key=GROUP,
                    grouping_method="marker",
                    content_hash=hashlib.sha256(manifest.to_bytes()).hexdigest(),
                    raw_prefix=raw_prefix,
                    manifest_key=manifest_key_for(raw_prefix),
                    file_count=len(entries),
                    total_bytes=sum(len(b) for b in contents.values()),
                    status="registered",
                )
            )
            session.flush()
            for f in entries:
                session.add(
                    SubmissionFile(
                        submission_id=submission_id,
                        inbox_key=f.inbox_key,
                        raw_key=f.raw_key,
                        size_bytes=f.size_bytes,
                        sha256=f.sha256,
                        etag=f.etag,
                        file_type=f.file_type,
                        layout_id=f.layout_id,
                        layout_version=f.layout_version,
                        classification=f.classification,
                    )
                )
                session.add(
                    InboxObject(
                        submission_id=submission_id, key=f.inbox_key, size_bytes=f.size_bytes, etag=f.etag, role="data"
                    )
                )
            session.add(
                InboxObject(submission_id=submission_id, key=MARKER, size_bytes=0, etag=marker_etag, role="marker")
            )
        if write_manifest:
            # As the registrar writes it: create-only, locked, its version recorded.
            ensure_manifest(engine, s3, platform_env.bucket, submission_id)
        return Registered(
            submission_id,
            raw_prefix,
            manifest_key_for(raw_prefix),
            {raw_prefix + name: body for name, body in contents.items()},
            {raw_prefix + name: GROUP + name for name in contents},
        )

    yield _register
    engine.dispose()


def stage(settings, registered: Registered, **options):
    engine = make_engine(settings.metadata_db_url)
    try:
        return stage_submission(
            engine=engine,
            s3=make_s3_client(settings),
            bucket=settings.bucket,
            submission_id=registered.submission_id,
            raw_root="raw/",
            **{"delete_inbox": True, **options},
        )
    finally:
        engine.dispose()


def some_files(count: int, size: int = 1000) -> dict[str, bytes]:
    return {f"part-{i:03d}.csv": os.urandom(size) for i in range(count)}


def read(settings, key: str) -> bytes:
    return make_s3_client(settings).get_object(Bucket=settings.bucket, Key=key)["Body"].read()


def keys_under(settings, prefix: str) -> list[str]:
    pages = make_s3_client(settings).get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def staged_at_by_raw_key(settings, submission_id: str) -> dict:
    engine = sa.create_engine(settings.metadata_db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(SubmissionFile.raw_key, SubmissionFile.staged_at).where(
                SubmissionFile.submission_id == submission_id
            )
        ).all()
    engine.dispose()
    return dict(rows)


def submission_row(settings, submission_id: str):
    engine = sa.create_engine(settings.metadata_db_url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(Submission.status, Submission.staged_at).where(Submission.submission_id == submission_id)
        ).one()
    engine.dispose()
    return row


def removed_at_by_key(settings, submission_id: str) -> dict:
    engine = sa.create_engine(settings.metadata_db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(InboxObject.key, InboxObject.removed_at).where(InboxObject.submission_id == submission_id)
        ).all()
    engine.dispose()
    return dict(rows)


def versions_by_key(settings, prefix: str) -> dict[str, list[tuple[bool, str]]]:
    """key -> [(is a delete marker, version id)], newest first, of every version under `prefix`."""
    s3 = make_s3_client(settings)
    found: dict[str, list[tuple[bool, str, object]]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=settings.bucket, Prefix=prefix):
        for kind in ("Versions", "DeleteMarkers"):
            for v in page.get(kind, ()):
                found.setdefault(v["Key"], []).append((kind == "DeleteMarkers", v["VersionId"], v["LastModified"]))
    return {
        key: [(marker, vid) for marker, vid, _ in sorted(vs, key=lambda v: v[2], reverse=True)]
        for key, vs in found.items()
    }


def removed_versions(settings, submission_id: str) -> dict:
    engine = sa.create_engine(settings.metadata_db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(InboxObject.key, InboxObject.removed_version_id).where(InboxObject.submission_id == submission_id)
        ).all()
    engine.dispose()
    return dict(rows)


def raw_objects(settings, submission_id: str) -> dict[str, RawObject]:
    engine = make_engine(settings.metadata_db_url)
    with Session(engine) as session:
        rows = session.scalars(sa.select(RawObject).where(RawObject.submission_id == submission_id)).all()
        session.expunge_all()
    engine.dispose()
    return {row.key: row for row in rows}


def run_stager(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    """`crash_at`: the worker kills itself at that checkpoint pass (workers.faults)."""
    return subprocess.run(
        [sys.executable, "-m", "workers.stager", *args],
        env={**os.environ, **({"WORKER_CRASH_AT": crash_at} if crash_at else {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_stages_every_file_with_the_sha256_the_manifest_records(platform_env, register):
    registered = register(some_files(5))

    result = stage(platform_env, registered, delete_inbox=False)

    manifest = Manifest.from_bytes(read(platform_env, registered.manifest_key))
    for f in manifest.files:
        assert hashlib.sha256(read(platform_env, f.raw_key)).hexdigest() == f.sha256
    assert all(staged_at_by_raw_key(platform_env, registered.submission_id).values())
    status, staged_at = submission_row(platform_env, registered.submission_id)
    assert (status, staged_at is not None) == ("staged", True)
    assert (result["status"], result["files_copied"], result["files_already_staged"]) == ("staged", 5, 0)
    assert result["bytes_copied"] == 5000
    by_raw_key = sorted(manifest.files, key=lambda f: f.raw_key)
    assert result["file_table"] == [
        {"file_id": file_id(f.inbox_key), "size_bytes": f.size_bytes, "sha256": f.sha256} for f in by_raw_key
    ]


def test_each_raw_copy_and_the_manifest_is_locked_from_its_own_write_and_its_version_recorded(platform_env, register):
    registered = register(some_files(3))
    s3 = make_s3_client(platform_env)

    stage(platform_env, registered, delete_inbox=False)

    recorded = raw_objects(platform_env, registered.submission_id)
    assert sorted(recorded) == sorted([*registered.raw_keys, registered.manifest_key])
    for key, row in recorded.items():
        (current,) = [v for v in s3.list_object_versions(Bucket=platform_env.bucket, Prefix=key)["Versions"]]
        assert row.version_id == current["VersionId"]
        assert row.kind == ("manifest" if key == registered.manifest_key else "data")
        if key != registered.manifest_key:
            assert row.sha256 == hashlib.sha256(registered.files[key]).hexdigest()
        retention = s3.get_object_retention(Bucket=platform_env.bucket, Key=key, VersionId=row.version_id)
        # The defaults: COMPLIANCE for ten years, counted from the version's own Last-Modified.
        assert retention["Retention"]["Mode"] == row.retention_mode == "COMPLIANCE"
        until = retention["Retention"]["RetainUntilDate"]
        assert until == row.retain_until.astimezone(until.tzinfo)
        # A manifest is put already locked, dated from just before its write, rounded up: it
        # may hold one second longer.
        slack = timedelta(seconds=2)
        assert timedelta(days=3653) <= until - current["LastModified"] <= timedelta(days=3653) + slack
        assert row.legal_hold is False


def test_a_legal_hold_and_governance_mode_are_applied_when_asked_for(platform_env, register):
    registered = register(some_files(2))
    s3 = make_s3_client(platform_env)
    retention = RetentionSettings(mode="GOVERNANCE", days=7, legal_hold=True)

    stage(platform_env, registered, delete_inbox=False, retention=retention)

    for key in registered.raw_keys:
        row = raw_objects(platform_env, registered.submission_id)[key]
        got = s3.get_object_retention(Bucket=platform_env.bucket, Key=key, VersionId=row.version_id)["Retention"]
        hold = s3.get_object_legal_hold(Bucket=platform_env.bucket, Key=key, VersionId=row.version_id)
        assert (got["Mode"], row.retention_mode, row.legal_hold) == ("GOVERNANCE", "GOVERNANCE", True)
        assert hold["LegalHold"]["Status"] == "ON"
        written = s3.head_object(Bucket=platform_env.bucket, Key=key, VersionId=row.version_id)["LastModified"]
        assert timedelta(days=7) <= got["RetainUntilDate"] - written <= timedelta(days=7, seconds=2)


def test_a_staged_version_cannot_be_deleted_or_replaced_even_with_the_root_keys(platform_env, register):
    registered = register(some_files(1))
    stage(platform_env, registered, delete_inbox=False)
    (key,) = registered.raw_keys
    version = raw_objects(platform_env, registered.submission_id)[key].version_id
    s3 = make_s3_client(platform_env)  # the store's root keys, in these tests

    for attempt in (
        lambda: s3.delete_object(Bucket=platform_env.bucket, Key=key, VersionId=version),
        lambda: s3.delete_object(
            Bucket=platform_env.bucket, Key=key, VersionId=version, BypassGovernanceRetention=True
        ),
    ):
        with pytest.raises(ClientError) as refused:
            attempt()
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # An overwrite (without If-None-Match) adds a version; the staged one stays readable by id.
    s3.put_object(Bucket=platform_env.bucket, Key=key, Body=b"tampered")
    staged = s3.get_object(Bucket=platform_env.bucket, Key=key, VersionId=version)["Body"].read()
    assert staged == registered.files[key]


def test_a_raw_copy_made_by_a_killed_run_is_locked_and_recorded_by_the_next(platform_env, register):
    registered = register(some_files(2))
    unmarked = registered.raw_keys[0]
    s3 = make_s3_client(platform_env)
    # Copied, then the run died: no lock (a copy carries none), no record, not marked.
    s3.copy_object(
        Bucket=platform_env.bucket,
        Key=unmarked,
        CopySource={"Bucket": platform_env.bucket, "Key": registered.inbox_keys[unmarked]},
    )

    result = stage(platform_env, registered, delete_inbox=False)

    assert (result["files_copied"], result["files_already_staged"]) == (1, 1)
    row = raw_objects(platform_env, registered.submission_id)[unmarked]
    retention = s3.get_object_retention(Bucket=platform_env.bucket, Key=unmarked, VersionId=row.version_id)
    assert retention["Retention"]["Mode"] == "COMPLIANCE"


def test_an_existing_raw_object_with_different_bytes_is_refused_and_left_unchanged(platform_env, register):
    registered = register(some_files(3))
    squatter = registered.raw_keys[1]
    make_s3_client(platform_env).put_object(Bucket=platform_env.bucket, Key=squatter, Body=b"other bytes")

    squatter_id = file_id(registered.inbox_keys[squatter])
    with pytest.raises(WorkerError, match=f"raw copy of {squatter_id} already exists with different bytes"):
        stage(platform_env, registered)

    assert read(platform_env, squatter) == b"other bytes"
    assert staged_at_by_raw_key(platform_env, registered.submission_id)[squatter] is None
    assert submission_row(platform_env, registered.submission_id).status == "registered"
    assert keys_under(platform_env, GROUP) == sorted([*registered.inbox_keys.values(), MARKER])


def test_a_resumed_run_keeps_files_already_staged_and_copies_the_rest(platform_env, register):
    registered = register(some_files(4))
    marked, copied_unmarked = registered.raw_keys[:2]
    s3 = make_s3_client(platform_env)
    for key in (marked, copied_unmarked):
        s3.copy_object(
            Bucket=platform_env.bucket,
            Key=key,
            CopySource={"Bucket": platform_env.bucket, "Key": registered.inbox_keys[key]},
        )
    engine = make_engine(platform_env.metadata_db_url)
    with Session(engine) as session, session.begin():
        session.execute(sa.update(SubmissionFile).where(SubmissionFile.raw_key == marked).values(staged_at=utcnow()))
    engine.dispose()

    result = stage(platform_env, registered)

    assert (result["files_copied"], result["files_already_staged"]) == (2, 2)
    assert result["bytes_copied"] == 2000
    assert all(staged_at_by_raw_key(platform_env, registered.submission_id).values())
    for key, body in registered.files.items():
        assert read(platform_env, key) == body


def test_a_run_killed_mid_way_is_finished_by_the_next_run(platform_env, register):
    registered = register(some_files(80, size=256 * 1024))
    engine = sa.create_engine(platform_env.metadata_db_url)
    staged_count = (
        sa.select(sa.func.count())
        .select_from(SubmissionFile)
        .where(SubmissionFile.submission_id == registered.submission_id, SubmissionFile.staged_at.is_not(None))
    )

    worker = subprocess.Popen(
        [sys.executable, "-m", "workers.stager", "--submission-id", registered.submission_id],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while worker.poll() is None:
            with engine.connect() as conn:
                if conn.execute(staged_count).scalar_one() > 0:
                    break
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.wait()
    with engine.connect() as conn:
        staged_before = conn.execute(staged_count).scalar_one()
    engine.dispose()
    assert worker.returncode == -signal.SIGKILL, "the stager finished before it could be killed"
    assert 0 < staged_before < 80

    done = run_stager("--submission-id", registered.submission_id)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["files_copied"] + result["files_already_staged"] == 80
    assert result["files_already_staged"] >= staged_before
    assert keys_under(platform_env, registered.raw_prefix) == sorted([*registered.raw_keys, registered.manifest_key])
    for key, body in registered.files.items():
        assert hashlib.sha256(read(platform_env, key)).hexdigest() == hashlib.sha256(body).hexdigest()
    assert all(staged_at_by_raw_key(platform_env, registered.submission_id).values())
    assert submission_row(platform_env, registered.submission_id).status == "staged"


def test_a_file_above_the_multipart_threshold_is_copied_in_parts(platform_env, register):
    registered = register({"big.csv": os.urandom(20 * MiB)})
    s3 = make_s3_client(platform_env)
    part_copies = []
    s3.meta.events.register("before-call.s3.UploadPartCopy", lambda **kwargs: part_copies.append(1))
    engine = make_engine(platform_env.metadata_db_url)

    result = stage_submission(
        engine=engine,
        s3=s3,
        bucket=platform_env.bucket,
        submission_id=registered.submission_id,
        raw_root="raw/",
        delete_inbox=False,
        multipart_threshold=8 * MiB,
    )
    engine.dispose()

    assert len(part_copies) == 3
    (key,) = registered.raw_keys
    assert hashlib.sha256(read(platform_env, key)).hexdigest() == hashlib.sha256(registered.files[key]).hexdigest()
    assert result["bytes_copied"] == 20 * MiB


def test_inbox_objects_are_removed_once_staged_leaving_no_version_or_delete_marker(platform_env, register):
    registered = register(some_files(3))
    s3 = make_s3_client(platform_env)
    first = registered.inbox_keys[registered.raw_keys[0]]
    s3.put_object(Bucket=platform_env.bucket, Key=first + ".tmp", Body=b"unrelated, same prefix")
    registered_versions = {key: vs[0][1] for key, vs in versions_by_key(platform_env, GROUP).items()}
    del registered_versions[first + ".tmp"]

    result = stage(platform_env, registered, delete_inbox=True)

    assert result["inbox_objects_removed"] == 4
    remaining = versions_by_key(platform_env, GROUP)
    assert list(remaining) == [first + ".tmp"]
    assert [marker for marker, _ in remaining[first + ".tmp"]] == [False]
    assert removed_versions(platform_env, registered.submission_id) == registered_versions


def test_an_older_version_at_a_registered_inbox_key_is_removed_with_it(platform_env, register):
    s3 = make_s3_client(platform_env)
    s3.put_object(Bucket=platform_env.bucket, Key=GROUP + "part-000.csv", Body=b"an earlier upload")
    s3.delete_object(Bucket=platform_env.bucket, Key=GROUP + "part-000.csv")  # a delete marker, then
    registered = register(some_files(2))  # the upload that is registered

    stage(platform_env, registered, delete_inbox=True)

    assert versions_by_key(platform_env, GROUP) == {}


def test_a_run_killed_during_the_inbox_clean_up_is_finished_by_the_next(platform_env, register):
    registered = register(some_files(3))
    # The second pass: the marker is gone and marked; the files' batch is deleted, not yet marked.
    crashed = run_stager("--submission-id", registered.submission_id, crash_at="stager.inbox_deleted:2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert keys_under(platform_env, GROUP) == []
    assert list(removed_at_by_key(platform_env, registered.submission_id).values()).count(None) == 3

    done = run_stager("--submission-id", registered.submission_id)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["inbox_objects_removed"] == 3
    assert versions_by_key(platform_env, GROUP) == {}
    assert all(removed_at_by_key(platform_env, registered.submission_id).values())


def test_inbox_objects_stay_when_stager_delete_inbox_is_false(platform_env, register, monkeypatch):
    registered = register(some_files(3))
    monkeypatch.setenv("STAGER_DELETE_INBOX", "false")

    result = work(platform_env, {"submission_id": registered.submission_id})

    assert keys_under(platform_env, GROUP) == sorted([*registered.inbox_keys.values(), MARKER])
    assert result["inbox_objects_removed"] == 0
    assert not any(removed_at_by_key(platform_env, registered.submission_id).values())


def test_an_inbox_object_reuploaded_with_different_bytes_after_staging_stays_alone(platform_env, register):
    registered = register(some_files(3))
    stage(platform_env, registered, delete_inbox=False)
    reuploaded = registered.inbox_keys[registered.raw_keys[0]]
    make_s3_client(platform_env).put_object(Bucket=platform_env.bucket, Key=reuploaded, Body=b"a corrected file")

    result = stage(platform_env, registered, delete_inbox=True)

    # The registered version is gone; the later upload stays, a later drop's file.
    assert keys_under(platform_env, GROUP) == [reuploaded]
    assert read(platform_env, reuploaded) == b"a corrected file"
    assert [marker for marker, _ in versions_by_key(platform_env, GROUP)[reuploaded]] == [False]
    assert (result["inbox_objects_removed"], result["inbox_objects_kept_changed"]) == (4, 1)
    assert all(removed_at_by_key(platform_env, registered.submission_id).values())


def test_an_inbox_object_reuploaded_before_staging_is_refused_not_copied(platform_env, register):
    registered = register(some_files(2))
    changed_raw_key = registered.raw_keys[0]
    make_s3_client(platform_env).put_object(
        Bucket=platform_env.bucket, Key=registered.inbox_keys[changed_raw_key], Body=b"different bytes"
    )

    with pytest.raises(WorkerError, match="changed since registration"):
        stage(platform_env, registered)

    assert changed_raw_key not in keys_under(platform_env, registered.raw_prefix)
    assert submission_row(platform_env, registered.submission_id).status == "registered"


def test_staging_a_staged_submission_is_a_noop_success(platform_env, register):
    registered = register(some_files(3))
    stage(platform_env, registered)
    first_staged_at = staged_at_by_raw_key(platform_env, registered.submission_id)

    result = stage(platform_env, registered)

    assert (result["status"], result["files_copied"], result["files_already_staged"]) == ("staged", 0, 3)
    assert (result["bytes_copied"], result["inbox_objects_removed"]) == (0, 0)
    assert staged_at_by_raw_key(platform_env, registered.submission_id) == first_staged_at


def test_a_manifest_that_disagrees_with_the_registered_files_is_refused(platform_env, register):
    registered = register(some_files(2))
    engine = make_engine(platform_env.metadata_db_url)
    with Session(engine) as session, session.begin():
        session.execute(
            sa.update(SubmissionFile).where(SubmissionFile.raw_key == registered.raw_keys[1]).values(sha256="0" * 64)
        )
    engine.dispose()

    differing = file_id(registered.inbox_keys[registered.raw_keys[1]])
    with pytest.raises(WorkerError, match=f"disagrees with the registered files on 1 file\\(s\\), first {differing}"):
        stage(platform_env, registered)

    assert keys_under(platform_env, registered.raw_prefix) == [registered.manifest_key]


def test_a_submission_whose_manifest_is_not_written_yet_is_refused(platform_env, register):
    registered = register(some_files(1), write_manifest=False)

    with pytest.raises(WorkerError, match="has no manifest yet"):
        stage(platform_env, registered)

    assert keys_under(platform_env, "raw/") == []


def test_an_unknown_submission_exits_nonzero_naming_it(platform_env):
    done = run_stager("--submission-id", "sub-missing")

    assert done.returncode == 1
    assert done.stderr.strip() == "stager: error: unknown submission 'sub-missing'"
    assert done.stdout == ""


def test_help_explains_the_arguments():
    done = subprocess.run(
        [sys.executable, "-m", "workers.stager", "--help"], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0
    assert "--submission-id" in done.stdout
    assert "STAGER_DELETE_INBOX" in done.stdout


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["copy_object", "multipart"])
def test_the_server_refuses_a_raw_copy_onto_an_existing_key(platform_env, size):
    # What makes raw writes create-only is the server's answer, not a check of ours beforehand:
    # the copy itself is refused (412) with the existing object left as it was.
    s3 = make_s3_client(platform_env)
    bucket = platform_env.bucket
    source = s3.put_object(Bucket=bucket, Key=GROUP + "f.csv", Body=os.urandom(size))
    s3.put_object(Bucket=bucket, Key="raw/acme/taken.csv", Body=b"first bytes")
    plan = CopyPlan(multipart_threshold=5 * MiB)

    with pytest.raises(ClientError) as refused:
        create_only_copy(s3, bucket, GROUP + "f.csv", source["ETag"], "raw/acme/taken.csv", size, plan)

    assert refused.value.response["Error"]["Code"] in PRECONDITION_FAILED
    assert read(platform_env, "raw/acme/taken.csv") == b"first bytes"
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix="raw/").get("Uploads", []) == []
    create_only_copy(s3, bucket, GROUP + "f.csv", source["ETag"], "raw/acme/new.csv", size, plan)
    assert len(read(platform_env, "raw/acme/new.csv")) == size


def test_two_stagers_racing_on_one_submission_both_end_with_every_file_staged_once(platform_env, register):
    registered = register(some_files(12))
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "workers.stager", "--submission-id", registered.submission_id],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "STAGER_DELETE_INBOX": "false"},
        )
        for _ in range(2)
    ]
    results = [(run.wait(timeout=120), *run.communicate()) for run in runs]

    assert [code for code, _, _ in results] == [0, 0], results
    reports = [json.loads(out) for _, out, _ in results]
    # Each file was copied by exactly one of them; the other found the same bytes there.
    assert sum(r["files_copied"] for r in reports) == 12
    assert keys_under(platform_env, registered.raw_prefix) == sorted([*registered.raw_keys, registered.manifest_key])
    for key, body in registered.files.items():
        assert read(platform_env, key) == body


def test_adoption_locks_and_records_migrated_copies_holding_their_bytes_and_names_the_rest(platform_env, register):
    registered = register(some_files(3))
    stage(platform_env, registered, delete_inbox=False)
    s3, bucket = make_s3_client(platform_env), platform_env.bucket
    # As after `aws s3 sync` into a new bucket: each object a new version, unlocked, unrecorded.
    for key in [*registered.raw_keys, registered.manifest_key]:
        s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key})
    tampered = registered.raw_keys[2]
    s3.put_object(Bucket=bucket, Key=tampered, Body=b"not the registered bytes")
    engine = make_engine(platform_env.metadata_db_url)
    with engine.begin() as conn:
        conn.execute(sa.delete(RawObject).where(RawObject.submission_id == registered.submission_id))
    engine.dispose()

    done = run_stager("--adopt-unrecorded")

    assert done.returncode == 1
    tampered_id = file_id(registered.inbox_keys[tampered])
    assert f"adopted 3; 1 not adopted, first: submission {registered.submission_id} {tampered_id}" in done.stderr
    recorded = raw_objects(platform_env, registered.submission_id)
    assert sorted(recorded) == sorted([*registered.raw_keys[:2], registered.manifest_key])
    for key, row in recorded.items():
        assert row.version_id == s3.head_object(Bucket=bucket, Key=key)["VersionId"]
        lock = s3.get_object_retention(Bucket=bucket, Key=key, VersionId=row.version_id)["Retention"]
        assert lock["Mode"] == "COMPLIANCE"
    # Run again once the operator has put the registered bytes back: all adopted, nothing twice.
    s3.put_object(Bucket=bucket, Key=tampered, Body=registered.files[tampered])
    again = run_stager("--adopt-unrecorded")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["adopted"] == 1


def test_the_audit_by_hand_exits_1_naming_an_overwritten_copy_and_0_when_clean(platform_env, register):
    registered = register(some_files(2))
    stage(platform_env, registered, delete_inbox=False)

    def audit() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "workers.audit"], env=dict(os.environ), capture_output=True, text=True, timeout=120
        )

    clean = audit()
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["passed"] is True
    make_s3_client(platform_env).put_object(Bucket=platform_env.bucket, Key=registered.raw_keys[0], Body=b"x")

    found = audit()

    assert found.returncode == 1
    report = json.loads(found.stdout)
    assert report["finding_table"] == [
        {
            "submission_id": registered.submission_id,
            "file_id": file_id(registered.inbox_keys[registered.raw_keys[0]]),
            "finding": "overwritten",
            "detail": "a later version sits at the key",
        }
    ]
