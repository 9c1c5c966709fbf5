"""The object store or the database goes away: nothing is lost, nothing half-written, and the
platform catches up once it is back. The S3 server here is a real one, stopped and restarted."""

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestrator.definitions import defs
from orchestrator.defs.intake.sensors import inbox_discovery_sensor
from tests.helpers import drop_files, list_all, run_worker
from tests.services import (
    S3_KEYS,
    S3Server,
    free_port_block,
    migrate,
    platform_environment,
    start_s3_server,
    stop_process_group,
    wait_for_s3,
)
from workers.store import ensure_bucket

GROUP = "inbox/acme/unknown/outage/"
DB_PASSWORD = "SENTINEL-DB-PASSWORD-retry"


@pytest.fixture
def restartable_s3(tmp_path, monkeypatch):
    """An S3 server of this test's own, which the test stops and starts again on the same port and data."""
    data, log = tmp_path / "data", tmp_path / "s3.log"
    proc, port = start_s3_server(data, log)
    server = S3Server(f"http://127.0.0.1:{port}", *S3_KEYS)
    wait_for_s3(server, proc, log)
    ensure_bucket(server.client(), "health-raw")
    settings = {"MINIO_ACCESS_KEY": server.access_key, "MINIO_SECRET_KEY": server.secret_key}
    for name, value in {**settings, "MINIO_ENDPOINT": server.endpoint, "MINIO_BUCKET": "health-raw"}.items():
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


def test_a_worker_with_the_database_down_retries_then_exits_naming_it_and_writes_nothing(s3_server, bucket, ledger):
    env = {
        "METADATA_DB_URL": f"postgresql+psycopg2://intake:{DB_PASSWORD}@127.0.0.1:1/metadata",
        "MINIO_ENDPOINT": s3_server.endpoint,
        "MINIO_ACCESS_KEY": s3_server.access_key,
        "MINIO_SECRET_KEY": s3_server.secret_key,
        "MINIO_BUCKET": bucket,
        "DB_CONNECT_ATTEMPTS": "3",
        "DB_CONNECT_BACKOFF_SECONDS": "0.1",
    }
    drop_files(s3_server.client(), bucket, GROUP, {"medical_claims.csv": b"1\n"})

    done = run_worker(env, "registrar", "--grouping-key", GROUP)

    assert done.returncode == 1
    *retries, error = done.stderr.strip().splitlines()
    assert [line.split(";")[0] for line in retries] == [
        "metadata database: connection attempt 1/3 failed (psycopg2.OperationalError)",
        "metadata database: connection attempt 2/3 failed (psycopg2.OperationalError)",
    ]
    assert error.startswith("registrar: error: metadata database error (postgresql at 127.0.0.1:1/metadata)")
    assert error.endswith("Connection refused (gave up after 3 connection attempts)")
    assert DB_PASSWORD not in done.stderr + done.stdout
    assert list_all(s3_server.client(), bucket, "raw/") == []
    assert len(list_all(s3_server.client(), bucket, GROUP)) == 2
    ledger.update(outages_survived=1)


@contextmanager
def forwarding(port: int, to: tuple[str, int]) -> Iterator[None]:
    """A TCP forwarder on 127.0.0.1:port to `to`: the database coming back on the port a worker dials."""
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.1)
    stopped = threading.Event()

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        for end in (source, sink):  # either side closing ends both directions; shutdown wakes the other pump
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def serve() -> None:
        while not stopped.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(to)
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield
    finally:
        stopped.set()
        server.join()
        listener.close()


def test_a_worker_started_while_the_database_is_down_connects_once_it_is_back(postgres_url, s3_server, bucket, ledger):
    migrate(postgres_url)
    database = sa.make_url(postgres_url)
    port = free_port_block()  # nothing listens here until the forwarder starts
    # Postgres here trusts local connections: the password travels but is never checked.
    url = database.set(port=port, password=DB_PASSWORD).render_as_string(hide_password=False)
    env = platform_environment(url, s3_server, bucket) | {
        "DB_CONNECT_ATTEMPTS": "10",
        "DB_CONNECT_BACKOFF_SECONDS": "0.2",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers.heartbeat"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_retry = worker.stderr.readline()  # the database stays down until the worker has been refused
    with forwarding(port, (database.host, database.port or 5432)):
        out, rest = worker.communicate(timeout=120)

    assert worker.returncode == 0, first_retry + rest
    assert first_retry.startswith("metadata database: connection attempt 1/10 failed (psycopg2.OperationalError)")
    assert DB_PASSWORD not in first_retry + rest + out
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id FROM bootstrap_heartbeat")).scalars().all()
    engine.dispose()
    assert rows == [json.loads(out)["row_id"]]
    ledger.update(outages_survived=1)
