"""The raw_copies_match_manifests asset check, through the launcher and a real audit worker process."""

import pytest

from tests.helpers import drop_files, run_check
from workers import classifier, registrar, stager
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


def test_the_check_fails_naming_by_its_id_a_file_whose_raw_bytes_changed(staged, synced_layouts, s3_server):
    s3 = s3_server.client()
    tampered = manifest_entries(s3, synced_layouts.bucket, staged)[0]
    s3.put_object(Bucket=synced_layouts.bucket, Key=tampered.raw_key, Body=b"not what was staged")

    evaluation = run_check()

    assert not evaluation.passed
    assert evaluation.metadata["mismatches"].value == 1
    found = str(evaluation.metadata["mismatches_found"].value)
    assert file_id(tampered.inbox_key) in found and tampered.raw_key not in found


def test_the_check_reports_a_missing_raw_object(staged, synced_layouts, s3_server):
    s3 = s3_server.client()
    gone = manifest_entries(s3, synced_layouts.bucket, staged)[1]
    s3.delete_object(Bucket=synced_layouts.bucket, Key=gone.raw_key)

    evaluation = run_check()

    assert not evaluation.passed
    assert "missing" in str(evaluation.metadata["mismatches_found"].value)
