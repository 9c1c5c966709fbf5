"""The raw_copies_match_manifests asset check, through the launcher and a real audit worker process."""

import dataclasses
import hashlib

import pytest
import sqlalchemy as sa

from tests.helpers import drop_files, run_check
from workers import classifier, registrar, stager
from workers.db import RawObject, make_engine
from workers.inbox import file_id
from workers.manifest import Manifest

GROUP = "inbox/acme/unknown/drop-001/"

pytestmark = pytest.mark.dagster_runs  # each test runs the check's job with a real audit worker


@pytest.fixture
def staged(synced_layouts, s3_server) -> dict:
    drop_files(s3_server.client(), synced_layouts.bucket, GROUP, {"medical_claims.csv": b"a\n", "b.txt": b"b"})
    files = classifier.work(synced_layouts, {"grouping_key": GROUP})["files"]
    registered = registrar.work(
        synced_layouts, {"grouping_key": GROUP, "grouping_method": "MARKER_FILE", "files": files}
    )
    stager.work(synced_layouts, {"submission_id": registered["submission_id"]})
    return registered


def test_the_check_passes_when_every_raw_copy_matches_its_manifest(staged):
    evaluation = run_check()
    assert evaluation.passed
    assert evaluation.metadata["files_checked"].value == 2


def manifest_entries(s3, bucket: str, registered: dict) -> list:
    return Manifest.from_bytes(s3.get_object(Bucket=bucket, Key=registered["manifest_key"])["Body"].read()).files


def findings(evaluation) -> list[dict]:
    return list(evaluation.metadata["findings_by_file"].value)


def test_an_overwritten_raw_file_is_flagged_by_id_and_its_staged_version_is_still_there(
    staged, synced_layouts, s3_server
):
    s3 = s3_server.client()
    tampered = manifest_entries(s3, synced_layouts.bucket, staged)[0]
    s3.put_object(Bucket=synced_layouts.bucket, Key=tampered.raw_key, Body=b"not what was staged")

    evaluation = run_check()

    assert not evaluation.passed
    assert evaluation.metadata["findings"].value == 1
    (found,) = findings(evaluation)
    assert (found["file_id"], found["finding"]) == (file_id(tampered.inbox_key), "overwritten")
    assert found["submission_id"] == staged["submission_id"]
    assert tampered.raw_key not in str(found)
    engine = make_engine(synced_layouts.metadata_db_url)
    with engine.connect() as conn:
        recorded = conn.scalar(sa.select(RawObject.version_id).where(RawObject.key == tampered.raw_key))
    engine.dispose()
    kept = s3.get_object(Bucket=synced_layouts.bucket, Key=tampered.raw_key, VersionId=recorded)
    assert hashlib.sha256(kept["Body"].read()).hexdigest() == tampered.sha256


def test_a_raw_file_and_its_manifest_rewritten_to_agree_are_both_flagged(staged, synced_layouts, s3_server):
    s3, bucket = s3_server.client(), synced_layouts.bucket
    entries = manifest_entries(s3, bucket, staged)
    forged_body = b"forged\n"
    forged = Manifest.from_bytes(s3.get_object(Bucket=bucket, Key=staged["manifest_key"])["Body"].read())
    forged = dataclasses.replace(
        forged,
        files=tuple(
            dataclasses.replace(f, sha256=hashlib.sha256(forged_body).hexdigest(), size_bytes=len(forged_body))
            if f.raw_key == entries[0].raw_key
            else f
            for f in forged.files
        ),
    )
    s3.put_object(Bucket=bucket, Key=entries[0].raw_key, Body=forged_body)
    s3.put_object(Bucket=bucket, Key=staged["manifest_key"], Body=forged.to_bytes())

    evaluation = run_check()

    assert not evaluation.passed
    flagged = {(f["file_id"], f["finding"]) for f in findings(evaluation)}
    assert flagged == {(file_id(entries[0].inbox_key), "overwritten"), ("manifest", "overwritten")}


def test_a_raw_file_hidden_by_a_delete_marker_is_flagged(staged, synced_layouts, s3_server):
    s3 = s3_server.client()
    hidden = manifest_entries(s3, synced_layouts.bucket, staged)[1]
    s3.delete_object(Bucket=synced_layouts.bucket, Key=hidden.raw_key)  # no version id: a delete marker

    evaluation = run_check()

    assert not evaluation.passed
    assert [(f["file_id"], f["finding"]) for f in findings(evaluation)] == [(file_id(hidden.inbox_key), "hidden")]


def test_a_staged_file_without_a_recorded_version_is_flagged_unrecorded(staged, synced_layouts, s3_server):
    entry = manifest_entries(s3_server.client(), synced_layouts.bucket, staged)[0]
    engine = make_engine(synced_layouts.metadata_db_url)
    with engine.begin() as conn:
        conn.execute(sa.delete(RawObject).where(RawObject.key == entry.raw_key))
    engine.dispose()

    evaluation = run_check()

    assert not evaluation.passed
    assert [(f["file_id"], f["finding"]) for f in findings(evaluation)] == [(file_id(entry.inbox_key), "unrecorded")]
