"""Real services for the suite: a SeaweedFS S3 server, Postgres databases of the suite's own, SQLite.

Each test gets a migrated metadata DB and a bucket of its own, and the environment a worker reads.
The services themselves are started by tests/services.py; helpers that are not fixtures are in
tests/helpers.py. Markers (pytest.ini) are put on tests here, by where they live.
"""

from __future__ import annotations

import uuid

import pytest

from tests.services import (
    S3_KEYS,
    S3Server,
    create_postgres_database,
    drop_postgres_database,
    migrate,
    platform_environment,
    remove_bucket,
    start_s3_server,
    stop_process_group,
    wait_for_s3,
)
from workers.db import make_engine
from workers.settings import Settings, load_settings
from workers.store import ensure_bucket

# Fixtures shared across directories, kept in modules of their own (pytest reads pytest_plugins in
# the root conftest only).
pytest_plugins = ["tests.container_fixtures", "tests.events_services"]

# Markers by where a test lives (its path under the repository: a folder ending in "/" or a module).
# pytest.ini says what each selects; -m picks any subset, e.g. -m reliability or -m "not containers".
MARKS_BY_PATH = {
    "tests/docker/": ("containers",),
    "tests/reliability/": ("reliability",),
    "tests/reliability/test_convergence.py": ("slow",),  # ./dev_up.sh in a fresh copy
    "tests/test_dev_up.py": ("slow",),
    "tests/browser/": ("browser", "slow"),  # a real browser against ./dev_up.sh in a fresh copy
    "tests/bench/": ("bench",),
}
# A test that uses one of these (tests/container_fixtures.py, tests/docker/conftest.py) needs a
# container engine and the images, wherever it lives.
CONTAINER_FIXTURES = frozenset({"engine", "env_file", "images", "docker_mode"})
# A test that uses one of these needs the local Postgres server (db_env: a database of its own with
# a login per role, tests/workers/test_db_roles.py); so does db_url's postgresql variant.
POSTGRES_FIXTURES = frozenset({"postgres_url", "db_env"})


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.relative_to(config.rootpath).as_posix() if item.path.is_relative_to(config.rootpath) else ""
        for where, names in MARKS_BY_PATH.items():
            if path == where or (where.endswith("/") and path.startswith(where)):
                for name in names:
                    item.add_marker(name)
        fixtures = set(getattr(item, "fixturenames", ()))
        if CONTAINER_FIXTURES & fixtures:
            item.add_marker("containers")
        if POSTGRES_FIXTURES & fixtures:
            item.add_marker("postgres")


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
    """A bucket of the test's own, locked as production's (workers.store.ensure_bucket), removed
    afterwards: SeaweedFS gives each bucket its own volumes, and a server with ~75 of them refuses
    writes into the 76th bucket."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    ensure_bucket(s3_server.client(), name)
    yield name
    remove_bucket(s3_server, name)


@pytest.fixture
def postgres_url() -> str:
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


# Each test that takes db_url runs on SQLite and on the local Postgres; -m "not postgres" keeps SQLite's.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
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


@pytest.fixture
def synced_layouts(platform_env: Settings) -> Settings:
    """platform_env with the packaged layout definitions loaded into layout_registry."""
    from workers import layouts

    engine = make_engine(platform_env.metadata_db_url)
    layouts.sync(engine, layouts.parse_definitions(layouts.packaged_definitions())[1])
    engine.dispose()
    return platform_env
