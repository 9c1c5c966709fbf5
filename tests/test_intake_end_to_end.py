"""Drop -> inbox_discovery_sensor -> register_submission_from_group_job -> staged, with real Dagster."""

import hashlib

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestrator.definitions import defs
from orchestrator.defs.intake.jobs import register_submission_from_group_job
from orchestrator.defs.intake.sensors import inbox_discovery_sensor
from orchestrator.defs.resources import WorkerLauncher
from tests.helpers import drop_files
from workers.manifest import Manifest

GROUP = "inbox/acme/unknown/drop-001/"

pytestmark = pytest.mark.dagster_runs  # the job runs in process, its workers as real processes


def tick(instance: dg.DagsterInstance, cursor: str | None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    return inbox_discovery_sensor.evaluate_tick(context)


def run(instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    return register_submission_from_group_job.execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance, resources={"launcher": WorkerLauncher()}
    )


def table_counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        tables = ("layout_registry", "submission", "submission_file", "inbox_object")
        result = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}
    engine.dispose()
    return result


def test_a_drop_with_a_marker_ends_staged_with_its_manifest(synced_layouts, s3_server):
    s3, bucket = s3_server.client(), synced_layouts.bucket
    drop_files(s3, bucket, GROUP, {"medical_claims.csv": b"m,a\n1,2\n", "ref/codes.txt": b"A1\n"})
    instance = dg.DagsterInstance.ephemeral()

    first = tick(instance, None)
    (request,) = first.run_requests
    assert request.tags["health-intake/submitter"] == "acme"
    result = run(instance, request)

    assert result.success
    counts = table_counts(synced_layouts.metadata_db_url)
    assert counts["layout_registry"] > 0
    assert (counts["submission"], counts["submission_file"], counts["inbox_object"]) == (1, 2, 3)
    raw = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="raw/")["Contents"]]
    (manifest_key,) = [k for k in raw if k.endswith("_manifest.generated.json")]
    manifest = Manifest.from_bytes(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert {f.raw_key for f in manifest.files} | {manifest_key} == set(raw)
    for entry in manifest.files:
        assert (
            hashlib.sha256(s3.get_object(Bucket=bucket, Key=entry.raw_key)["Body"].read()).hexdigest() == entry.sha256
        )

    # The stager removed the inbox copies, so the next tick has nothing pending and asks for nothing.
    assert s3.list_objects_v2(Bucket=bucket, Prefix="inbox/").get("KeyCount") == 0
    second = tick(instance, first.cursor)
    assert second.run_requests == []


def test_a_late_file_after_staging_becomes_a_linked_second_submission(synced_layouts, s3_server, monkeypatch):
    s3, bucket = s3_server.client(), synced_layouts.bucket
    instance = dg.DagsterInstance.ephemeral()
    drop_files(s3, bucket, GROUP, {"medical_claims.csv": b"first\n"})
    first = tick(instance, None)
    run(instance, first.run_requests[0])

    drop_files(s3, bucket, GROUP, {"medical_claims_late.csv": b"late\n"})
    second = tick(instance, first.cursor)
    (request,) = second.run_requests
    assert request.run_key != first.run_requests[0].run_key
    run(instance, request)

    engine = sa.create_engine(synced_layouts.metadata_db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT submission_id, previous_submission_id, status FROM submission ORDER BY id")
        ).all()
    engine.dispose()
    assert [r.status for r in rows] == ["staged", "staged"]
    assert rows[1].previous_submission_id == rows[0].submission_id
