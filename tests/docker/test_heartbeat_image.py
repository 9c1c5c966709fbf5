"""The heartbeat image on its own, against the host's real Postgres and a real S3 server.

--network=host: the container reaches Postgres and the S3 server where they listen, 127.0.0.1.
"""

import json

import sqlalchemy as sa

from orchestrator.defs.dagster_internals import wait_for_exit
from tests.containers import image_name
from tests.services import S3Server, platform_environment


def worker_env(db_url: str, s3: S3Server, bucket: str) -> dict[str, str]:
    """What a worker container reads: the platform environment less the launcher's own setting."""
    env = platform_environment(db_url, s3, bucket)
    del env["WORKER_LAUNCH_MODE"]
    return env


def run_image(engine, env: dict[str, str], *args: str, entrypoint=None) -> tuple[int, str]:
    container = engine.containers.run(
        image_name("heartbeat"), list(args), entrypoint=entrypoint, environment=env, network_mode="host", detach=True
    )
    try:
        code = wait_for_exit(container)
        return code, container.logs(stdout=True, stderr=True).decode()
    finally:
        container.remove(force=True)


def test_the_image_migrates_the_database_and_the_heartbeat_writes_its_row_and_object(
    images, engine, postgres_url, s3_server, bucket
):
    env = worker_env(postgres_url, s3_server, bucket)
    code, output = run_image(engine, env, "-c", "/app/alembic.ini", "upgrade", "head", entrypoint=["alembic"])
    assert code == 0, output

    code, output = run_image(engine, env)

    assert code == 0, output
    report = json.loads(output.strip().splitlines()[-1])
    engine_db = sa.create_engine(postgres_url)
    with engine_db.connect() as conn:
        row = conn.execute(sa.text("SELECT id, message FROM bootstrap_heartbeat")).one()
    engine_db.dispose()
    assert (report["row_id"], row.message) == (row.id, "phase0_ok")
    head = s3_server.client().head_object(Bucket=bucket, Key=report["object_key"])
    assert head["ContentLength"] == report["size_bytes"]


def test_the_image_fails_with_one_line_naming_the_unreachable_database(images, engine, s3_server, bucket):
    env = worker_env("postgresql+psycopg2://intake:SENTINEL-PW@127.0.0.1:1/metadata", s3_server, bucket)
    code, output = run_image(engine, env)
    assert code == 1
    assert "heartbeat: error: metadata database error (postgresql at 127.0.0.1:1/metadata)" in output
    assert "SENTINEL-PW" not in output
