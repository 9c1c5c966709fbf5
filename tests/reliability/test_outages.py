"""The object store or the database goes away: nothing is lost, nothing half-written, and the
platform catches up once it is back. The S3 server here is a real one, stopped and restarted."""

import dagster as dg
import pytest
from orchestrator.definitions import defs
from orchestrator.defs.intake.sensors import inbox_discovery_sensor

from tests.conftest import S3_KEYS, S3Server, drop_files, start_s3_server, stop_process_group, wait_for_s3
from tests.reliability.conftest import list_all, run_worker

GROUP = "inbox/acme/unknown/outage/"


@pytest.fixture
def restartable_s3(tmp_path, monkeypatch):
    """An S3 server of this test's own, which the test stops and starts again on the same port and data."""
    data, log = tmp_path / "data", tmp_path / "s3.log"
    proc, port = start_s3_server(data, log)
    server = S3Server(f"http://127.0.0.1:{port}", *S3_KEYS)
    wait_for_s3(server, proc, log)
    server.client().create_bucket(Bucket="health-raw")
    for name, value in {"MINIO_ENDPOINT": server.endpoint, "MINIO_BUCKET": "health-raw"}.items():
        monkeypatch.setenv(name, value)
    handle = {"proc": proc}

    def stop():
        stop_process_group(handle["proc"])

    def start():
        handle["proc"] = start_s3_server(data, log, port=port)[0]
        wait_for_s3(server, handle["proc"], log)

    yield server, stop, start
    stop()


def tick(cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), cursor=cursor, definitions=defs)
    return inbox_discovery_sensor.evaluate_tick(context)


def test_a_tick_during_an_object_store_outage_fails_and_the_next_catches_up(restartable_s3, ledger):
    server, stop, start = restartable_s3
    before = tick(None)
    drop_files(server.client(), "health-raw", GROUP, {"medical_claims.csv": b"1\n"})
    stop()

    with pytest.raises(Exception):  # noqa: B017 - any failure of the tick is right; a silent empty tick is not
        tick(before.cursor)

    start()
    after = tick(before.cursor)
    assert [
        request.run_config["ops"]["register_submission_from_group"]["config"]["grouping_key"]
        for request in after.run_requests
    ] == [GROUP]
    ledger.update(outages_survived=1)


def test_a_worker_with_the_database_down_exits_naming_it_and_writes_nothing(s3_server, bucket, ledger):
    env = {
        "METADATA_DB_URL": "postgresql+psycopg2://intake@127.0.0.1:1/metadata",
        "MINIO_ENDPOINT": s3_server.endpoint,
        "MINIO_BUCKET": bucket,
    }
    drop_files(s3_server.client(), bucket, GROUP, {"medical_claims.csv": b"1\n"})

    done = run_worker(env, "registrar", "--grouping-key", GROUP)

    assert done.returncode == 1
    assert "registrar: error: metadata database error (postgresql at 127.0.0.1:1/metadata)" in done.stderr
    assert list_all(s3_server.client(), bucket, "raw/") == []
    assert len(list_all(s3_server.client(), bucket, GROUP)) == 2
    ledger.update(outages_survived=1)
