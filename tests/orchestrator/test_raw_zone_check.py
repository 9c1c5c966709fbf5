"""The raw_copies_match_manifests asset check, through the launcher and a real audit worker process."""

import dagster as dg
import pytest
from orchestrator.defs.intake.checks import raw_copies_match_manifests, raw_zone
from orchestrator.defs.resources import WorkerLauncher

from tests.conftest import drop_files
from workers import classifier, registrar, stager

GROUP = "inbox/acme/unknown/drop-001/"


def run_check() -> dg.AssetCheckEvaluation:
    defs = dg.Definitions(
        assets=[raw_zone],
        asset_checks=[raw_copies_match_manifests],
        jobs=[dg.define_asset_job("audit_raw_zone", selection=dg.AssetSelection.checks(raw_copies_match_manifests))],
        resources={"launcher": WorkerLauncher()},
    )
    result = defs.resolve_job_def("audit_raw_zone").execute_in_process()
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


@pytest.fixture
def staged(synced_layouts, s3_server) -> dict:
    drop_files(s3_server.client(), synced_layouts.bucket, GROUP, {"medical_claims.csv": b"a\n", "b.txt": b"b"})
    files = classifier.work(synced_layouts, {"grouping_key": GROUP})["files"]
    registered = registrar.work(synced_layouts, {"grouping_key": GROUP, "grouping_method": "marker", "files": files})
    stager.work(synced_layouts, {"submission_id": registered["submission_id"]})
    return registered


def test_the_check_passes_when_every_raw_copy_matches_its_manifest(staged):
    evaluation = run_check()
    assert evaluation.passed
    assert evaluation.metadata["files_checked"].value == 2


def test_the_check_fails_naming_a_raw_object_whose_bytes_changed(staged, synced_layouts, s3_server):
    tampered = staged["file_table"][0]["raw_key"]
    s3_server.client().put_object(Bucket=synced_layouts.bucket, Key=tampered, Body=b"not what was staged")

    evaluation = run_check()

    assert not evaluation.passed
    assert evaluation.metadata["mismatches"].value == 1
    assert tampered in str(evaluation.metadata["mismatches_found"].value)


def test_the_check_reports_a_missing_raw_object(staged, synced_layouts, s3_server):
    gone = staged["file_table"][1]["raw_key"]
    s3_server.client().delete_object(Bucket=synced_layouts.bucket, Key=gone)

    evaluation = run_check()

    assert not evaluation.passed
    assert "missing" in str(evaluation.metadata["mismatches_found"].value)
