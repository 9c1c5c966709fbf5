"""Real services for the suite: a SeaweedFS S3 server, Postgres databases of the suite's own, SQLite.

Each test gets a migrated metadata DB and a bucket of its own, and the environment a worker reads.
"""

from __future__ import annotations

import uuid

import pytest
from workers.db import make_engine
from workers.settings import Settings, load_settings

from tests.services import (  # noqa: F401 - re-exported: the tests import these from here
    PG_ADMIN_URL,
    REPO,
    S3_KEYS,
    S3Server,
    alembic_config,
    create_postgres_database,
    drop_postgres_database,
    free_port_block,
    migrate,
    platform_environment,
    port_is_free,
    remove_bucket,
    start_s3_server,
    stop_process_group,
    wait_for_s3,
)


@pytest.fixture(autouse=True)
def quick_db_connect_retries(monkeypatch):
    """Tests that point a worker at a database that is down would otherwise wait out the default
    backoff (seconds per test); tests of the retry itself set their own values."""
    monkeypatch.setenv("DB_CONNECT_BACKOFF_SECONDS", "0.01")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    root = tmp_path_factory.mktemp("s3")
    proc, port = start_s3_server(root / "data", root / "s3.log")
    server = S3Server(f"http://127.0.0.1:{port}", *S3_KEYS)
    try:
        wait_for_s3(server, proc, root / "s3.log")
        yield server
    finally:
        stop_process_group(proc)


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A bucket of the test's own, removed afterwards: SeaweedFS gives each bucket its own volumes,
    and a server with ~75 of them refuses writes into the 76th bucket."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=name)
    yield name
    remove_bucket(s3, name)


@pytest.fixture
def postgres_url() -> str:
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metadata.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def migrated_db_url(db_url: str) -> str:
    migrate(db_url)
    return db_url


@pytest.fixture
def platform_env(monkeypatch, migrated_db_url: str, s3_server: S3Server, bucket: str) -> Settings:
    """The environment a worker and the orchestrator read, pointed at this test's DB and bucket."""
    env = platform_environment(migrated_db_url, s3_server, bucket)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def drop_files(s3, bucket: str, grouping_key: str, files: dict[str, bytes], marker: str | None = "_SUCCESS") -> None:
    """Puts files into the inbox as a partner would, then the completion marker."""
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=grouping_key + name, Body=body)
    if marker:
        s3.put_object(Bucket=bucket, Key=grouping_key + marker, Body=b"")


@pytest.fixture
def synced_layouts(platform_env: Settings) -> Settings:
    """platform_env with the packaged layout definitions loaded into layout_registry."""
    from workers import layouts

    engine = make_engine(platform_env.metadata_db_url)
    layouts.sync(engine, layouts.parse_definitions(layouts.packaged_definitions())[1])
    engine.dispose()
    return platform_env
