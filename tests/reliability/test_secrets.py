"""After a full run with sentinel credentials and a sentinel in a file's body, no sentinel appears in
Dagster's event log, run configs and tags, compute logs, worker output or error messages."""

from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from orchestrator.definitions import defs
from orchestrator.defs.bootstrap.assets import bootstrap_heartbeat_asset
from orchestrator.defs.intake.assets import sync_layout_registry
from orchestrator.defs.intake.jobs import register_submission_from_group_job
from orchestrator.defs.intake.sensors import inbox_discovery_sensor
from orchestrator.defs.resources import WorkerLauncher

from tests.conftest import S3Server, drop_files, migrate, start_s3_server, stop_process_group, wait_for_s3

ACCESS_KEY = "AKIASENTINELACCESS7"
SECRET_KEY = "SENTINEL-SECRET-KEY-9f3a"
DB_PASSWORD = "SENTINEL-DB-PASSWORD-51c2"
PHI = "SENTINEL-PHI John Q Patient 123-45-6789"
SENTINELS = (ACCESS_KEY, SECRET_KEY, DB_PASSWORD, PHI)
GROUP = "inbox/acme/unknown/drop-phi/"


@pytest.fixture
def sentinel_platform(tmp_path, postgres_url, monkeypatch):
    proc, port = start_s3_server(tmp_path / "s3", tmp_path / "s3.log", keys=(ACCESS_KEY, SECRET_KEY))
    server = S3Server(f"http://127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY)
    wait_for_s3(server, proc, tmp_path / "s3.log")
    server.client().create_bucket(Bucket="health-raw")
    # Postgres here trusts local connections, so the password is carried everywhere but never checked.
    db_url = sa.make_url(postgres_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)
    migrate(db_url)
    env = {
        "METADATA_DB_URL": db_url,
        "MINIO_ENDPOINT": server.endpoint,
        "MINIO_ACCESS_KEY": ACCESS_KEY,
        "MINIO_SECRET_KEY": SECRET_KEY,
        "MINIO_BUCKET": "health-raw",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield server
    stop_process_group(proc)


def sentinels_in(text: str) -> list[str]:
    return [s for s in SENTINELS if s in text]


def sentinels_under(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            hits = sentinels_in(path.read_bytes().decode("utf-8", "replace"))
            if hits:
                found[str(path)] = hits
    return found


def full_run(instance: dg.DagsterInstance, server: S3Server) -> None:
    resources = {"launcher": WorkerLauncher()}
    assert dg.materialize(
        [bootstrap_heartbeat_asset, sync_layout_registry], resources=resources, instance=instance
    ).success
    drop_files(server.client(), "health-raw", GROUP, {"medical_claims.csv": PHI.encode() + b",100\n"})
    tick = inbox_discovery_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    (request,) = tick.run_requests
    job = register_submission_from_group_job
    assert job.execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance, resources=resources
    ).success


def failing_run(instance: dg.DagsterInstance, monkeypatch) -> str:
    monkeypatch.setenv("METADATA_DB_URL", f"postgresql+psycopg2://intake:{DB_PASSWORD}@127.0.0.1:1/metadata")
    result = dg.materialize(
        [bootstrap_heartbeat_asset], resources={"launcher": WorkerLauncher()}, instance=instance, raise_on_error=False
    )
    assert not result.success
    return result.get_step_failure_events()[0].step_failure_data.error.to_string()


def test_no_credential_or_file_content_leaves_the_object_store(sentinel_platform, tmp_path, capfd, monkeypatch, ledger):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        full_run(instance, sentinel_platform)
        error = failing_run(instance, monkeypatch)
        runs = instance.get_runs()
        configs_and_tags = repr([(run.run_config, run.tags) for run in runs])
        events = repr(
            [record.event_log_entry for run in runs for record in instance.get_records_for_run(run.run_id).records]
        )
    output = capfd.readouterr()

    leaks = {
        "dagster home (event log, compute logs, run storage)": sentinels_under(home),
        "run configs and tags": sentinels_in(configs_and_tags),
        "event log entries": sentinels_in(events),
        "worker and orchestrator output": sentinels_in(output.out + output.err),
        "error message": sentinels_in(error),
    }
    found = {where: hits for where, hits in leaks.items() if hits}
    ledger.update(secrets_scans=1, secrets_found=sum(len(h) for h in found.values()))
    assert found == {}
    # The PHI really went through the platform: it is in the raw zone, where it belongs.
    raw = sentinel_platform.client().list_objects_v2(Bucket="health-raw", Prefix="raw/acme/")["Contents"]
    bodies = [sentinel_platform.client().get_object(Bucket="health-raw", Key=o["Key"])["Body"].read() for o in raw]
    assert any(PHI.encode() in body for body in bodies)


def test_the_scan_finds_a_planted_sentinel(tmp_path):
    """The scanner itself can fail: a sentinel written where it looks is found."""
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "log.txt").write_text(f"oops {SECRET_KEY}")
    assert sentinels_under(tmp_path) == {str(tmp_path / "nested" / "log.txt"): [SECRET_KEY]}
