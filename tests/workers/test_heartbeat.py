import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from botocore.exceptions import EndpointConnectionError

from tests.services import platform_environment
from workers.db import make_engine
from workers.heartbeat import HELLO_KEY, MESSAGE, beat
from workers.store import make_s3_client


def run_heartbeat(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workers.heartbeat", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def heartbeat_rows(url: str) -> list[tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, message FROM bootstrap_heartbeat ORDER BY id")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_beat_writes_the_row_and_the_object(platform_env):
    s3 = make_s3_client(platform_env)
    result = beat(engine=make_engine(platform_env.metadata_db_url), s3=s3, bucket=platform_env.bucket)

    body = s3.get_object(Bucket=platform_env.bucket, Key=HELLO_KEY)["Body"].read()
    assert heartbeat_rows(platform_env.metadata_db_url) == [(result["row_id"], MESSAGE)]
    assert result["size_bytes"] == len(body)
    assert result["sha256"] == hashlib.sha256(body).hexdigest()


def test_beat_leaves_no_row_when_the_upload_fails(platform_env):
    dead_store = make_s3_client(dataclasses.replace(platform_env, s3_endpoint="http://127.0.0.1:1"))
    engine = make_engine(platform_env.metadata_db_url)
    with pytest.raises(EndpointConnectionError):
        beat(engine=engine, s3=dead_store, bucket=platform_env.bucket)
    assert heartbeat_rows(platform_env.metadata_db_url) == []


def test_standalone_run_prints_one_json_line_and_exits_0(migrated_db_url, s3_server, bucket):
    env = platform_environment(migrated_db_url, s3_server, bucket)
    done = run_heartbeat(env)

    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    result = json.loads(line)
    assert result["worker"] == "heartbeat"
    assert result["object_key"] == HELLO_KEY
    assert result["db_dialect"] == sa.make_url(migrated_db_url).get_backend_name()
    assert result["endpoint_host"] == s3_server.endpoint.removeprefix("http://")
    assert heartbeat_rows(migrated_db_url) == [(result["row_id"], MESSAGE)]
    s3_server.client().head_object(Bucket=bucket, Key=HELLO_KEY)


def test_unreachable_database_exits_nonzero_naming_it_without_the_password(s3_server, bucket):
    env = platform_environment("postgresql+psycopg2://intake:SENTINEL-PW@127.0.0.1:1/metadata", s3_server, bucket)
    done = run_heartbeat(env)

    assert done.returncode == 1
    assert "heartbeat: error: metadata database error (postgresql at 127.0.0.1:1/metadata)" in done.stderr
    assert "SENTINEL-PW" not in done.stderr + done.stdout


def test_unreachable_object_store_exits_nonzero_and_rolls_back_the_row(migrated_db_url, s3_server, bucket):
    env = {**platform_environment(migrated_db_url, s3_server, bucket), "MINIO_ENDPOINT": "http://127.0.0.1:1"}
    done = run_heartbeat(env)

    assert done.returncode == 1
    assert "heartbeat: error: object store unreachable at 127.0.0.1:1" in done.stderr
    assert heartbeat_rows(migrated_db_url) == []


def test_wrong_credentials_are_reported_without_echoing_them(migrated_db_url, s3_server, bucket):
    env = {**platform_environment(migrated_db_url, s3_server, bucket), "MINIO_SECRET_KEY": "SENTINEL-SECRET"}
    done = run_heartbeat(env)

    assert done.returncode == 1
    assert "object store refused PutObject" in done.stderr
    assert "SENTINEL-SECRET" not in done.stderr


def test_a_malformed_setting_exits_nonzero_naming_the_variable(s3_server, bucket):
    env = platform_environment("sqlite:////tmp/x.db", s3_server, bucket) | {"MINIO_ENDPOINT": "nope"}
    done = run_heartbeat(env)

    assert done.returncode == 1
    assert done.stderr.strip().startswith("heartbeat: error: MINIO_ENDPOINT")


def test_a_malformed_db_connect_setting_exits_nonzero_naming_the_variable(migrated_db_url, s3_server, bucket):
    env = platform_environment(migrated_db_url, s3_server, bucket) | {"DB_CONNECT_ATTEMPTS": "0"}
    done = run_heartbeat(env)

    assert done.returncode == 1
    assert done.stderr.strip() == "heartbeat: error: DB_CONNECT_ATTEMPTS must be an integer >= 1"
    assert heartbeat_rows(migrated_db_url) == []


def test_pipes_flag_outside_dagster_refuses_instead_of_reporting_into_a_mock(migrated_db_url, s3_server, bucket):
    done = run_heartbeat(platform_environment(migrated_db_url, s3_server, bucket), "--pipes")

    assert done.returncode == 2
    assert "no Dagster Pipes context" in done.stderr
    assert heartbeat_rows(migrated_db_url) == []


def test_help_explains_the_worker():
    done = run_heartbeat({}, "--help")
    assert done.returncode == 0
    assert "bootstrap_heartbeat" in done.stdout
