"""Metadata-DB roles (workers.db_roles) on the real local Postgres: each role may do exactly its
grants, `apply` is idempotent and takes back what was granted by hand, and the whole intake runs
with every worker (and the sensor) logged in as its own role.

Postgres roles are cluster-wide: each test's logins carry a random suffix and are dropped after.
The local server trusts 127.0.0.1, so passwords are set but not proved here (the stack test is where
they are)."""

import os
import secrets
import subprocess
import sys

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestrator.definitions import defs
from orchestrator.defs import resources
from orchestrator.defs.bootstrap.assets import bootstrap_heartbeat_asset
from orchestrator.defs.intake.assets import sync_layout_registry
from orchestrator.defs.intake.jobs import register_submission_from_group_job
from orchestrator.defs.intake.sensors import inbox_discovery_sensor
from orchestrator.defs.resources import WorkerLauncher
from tests.helpers import BUCKET, ROLE_KEYS, drop_files, roles_env, run_check
from tests.services import PG_ADMIN_URL, create_postgres_database, drop_postgres_database, migrate
from workers import db_roles
from workers.catalogue import WORKERS, worker
from workers.db import Base, InboxRejection, Submission
from workers.inbox import InboxObject, file_id
from workers.outcomes import record_rejections
from workers.settings import SettingsError

GROUP = "inbox/acme/unknown/dbroles-001/"


def run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The command as compose's db_roles step runs it: database settings only, no object-store key."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("MINIO_")}
    return subprocess.run(
        [sys.executable, "-m", "workers.db_roles", command],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def admin(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    engine.dispose()


@pytest.fixture
def db_env() -> dict[str, str]:
    """A migrated database of its own, and a URL per role (random login names and passwords);
    METADATA_DB_URL is the owner's. The database goes first, then the logins (dropping the
    database drops their grants with it)."""
    url = create_postgres_database()
    suffix = secrets.token_hex(4)
    base = sa.make_url(url)
    env = {"METADATA_DB_URL": url}
    for role in db_roles.DB_GRANTS:
        login = base.set(username=f"hp_{role}_{suffix}", password=secrets.token_hex(16))
        env[db_roles.url_variable(role)] = login.render_as_string(hide_password=False)
    try:
        migrate(url)
        yield env
    finally:
        drop_postgres_database(url)
        logins = [f'"hp_{role}_{suffix}"' for role in db_roles.DB_GRANTS]
        engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {', '.join(logins)}"))
        engine.dispose()


@pytest.fixture
def applied(db_env) -> dict[str, str]:
    done = run("apply", db_env)
    assert done.returncode == 0, done.stderr
    return db_env


def engine_as(env: dict[str, str], role: str) -> sa.Engine:
    return sa.create_engine(env[db_roles.url_variable(role)])


def refused(engine: sa.Engine, statement: str) -> bool:
    with engine.connect() as conn:
        try:
            conn.execute(sa.text(statement))
        except sa.exc.ProgrammingError as exc:
            return exc.orig.pgcode == "42501"
        finally:
            conn.rollback()
    return False


def test_the_check_finds_every_role_allowed_exactly_its_grants(applied):
    result = run("check", applied)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("ok ") for line in lines)
    tables = len(Base.metadata.tables) + 1  # and alembic_version
    assert len(lines) == len(db_roles.DB_GRANTS) * (4 * tables + len(Base.metadata.tables) + 1)
    for line in (
        "ok  stager     DELETE submission           refused",
        "ok  stager     UPDATE submission           allowed",
        "ok  classifier INSERT layout_registry      refused",
        "ok  sensor     SELECT submission           allowed",
        "ok  sensor     UPDATE submission           refused",
        "ok  sensor     SELECT submission_file      refused",
        "ok  sensor     DELETE drop_recovery        refused",
        "ok  sensor     INSERT inbox_rejection      allowed",
        "ok  heartbeat  USAGE  bootstrap_heartbeat  allowed",
        "ok  auditor    UPDATE submission           refused",
        "ok  registrar  DELETE submission_file      refused",
        "ok  layouts    DELETE layout_registry      refused",
        "ok  registrar  SELECT alembic_version      refused",
        "ok  stager     CREATE public               refused",
    ):
        assert line in result.stdout, line
    assert not [v for v in applied.values() if sa.make_url(v).password and sa.make_url(v).password in result.stdout]


def test_each_role_is_refused_outside_its_grants(applied):
    stager, classifier, sensor, auditor, heartbeat = (
        engine_as(applied, r) for r in ("stager", "classifier", "sensor", "auditor", "heartbeat")
    )
    attempts = {
        "the stager deletes a submission": (stager, "DELETE FROM submission"),
        "the stager adds a submission file": (stager, "INSERT INTO submission_file (id) VALUES (1)"),
        "the classifier writes a layout": (classifier, "UPDATE layout_registry SET active = false"),
        "the sensor reads submission files": (sensor, "SELECT * FROM submission_file"),
        "the sensor deletes a recovery record": (sensor, "DELETE FROM drop_recovery"),
        "the sensor marks a submission staged": (sensor, "UPDATE submission SET status = 'staged'"),
        "the sensor deletes a rejection": (sensor, "DELETE FROM inbox_rejection"),
        "the auditor changes a recorded raw version": (auditor, "UPDATE raw_object SET version_id = 'forged'"),
        "the stager rewrites a recorded raw version": (stager, "UPDATE raw_object SET version_id = 'forged'"),
        "the stager forgets a recorded raw version": (stager, "DELETE FROM raw_object"),
        "the heartbeat reads layouts": (heartbeat, "SELECT * FROM layout_registry"),
        "the heartbeat creates a table": (heartbeat, "CREATE TABLE public.x (i integer)"),
    }
    allowed = [what for what, (engine, statement) in attempts.items() if not refused(engine, statement)]

    assert allowed == []
    # ...and what the sensor is for works, through the code it runs.
    obj = InboxObject("inbox/too-shallow.csv", 3, "etag-1")
    assert [r.file_id for r in record_rejections(sensor, [(obj, "too shallow", None)])] == [file_id(obj.key)]
    with sensor.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(InboxRejection)) == 1
    for engine in (stager, classifier, sensor, auditor, heartbeat):
        engine.dispose()


def test_apply_is_idempotent_and_takes_back_what_was_granted_by_hand(applied):
    stager, classifier = (sa.make_url(applied[db_roles.url_variable(r)]).username for r in ("stager", "classifier"))
    admin(
        applied["METADATA_DB_URL"],
        f'GRANT DELETE ON submission TO "{stager}"',
        f'GRANT pg_read_all_data TO "{classifier}"',
        f'ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO "{classifier}"',
    )
    widened = run("check", applied)
    assert widened.returncode == 1
    assert "BAD stager     DELETE submission           allowed (expected refused)" in widened.stdout

    again = run("apply", applied)
    assert again.returncode == 0, again.stderr
    checked = run("check", applied)
    assert checked.returncode == 0, checked.stdout[-3000:]
    # The default privilege granted by hand is gone too: a table made later stays closed.
    admin(applied["METADATA_DB_URL"], "CREATE TABLE public.later_table (id serial primary key, note text)")
    assert refused(engine_as(applied, "classifier"), "SELECT * FROM later_table")
    after = run("check", applied)
    assert after.returncode == 0 and "ok  classifier SELECT later_table          refused" in after.stdout


def test_apply_refuses_a_role_without_its_url_and_names_the_variable(db_env):
    env = {k: v for k, v in db_env.items() if k != "METADATA_STAGER_DB_URL"}
    done = run("apply", env)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "db_roles: METADATA_STAGER_DB_URL is not set: every metadata-DB role needs its own URL"
    )


def test_apply_says_sqlite_has_no_roles(tmp_path):
    done = run("apply", {"METADATA_DB_URL": f"sqlite:///{tmp_path / 'm.db'}"})
    assert done.returncode == 2 and "SQLite (dev mode) has no roles" in done.stderr


def test_db_url_for_gives_each_roles_own_url_and_none_in_dev_mode():
    env = {"METADATA_STAGER_DB_URL": "postgresql+psycopg2://s:p@db/m", "METADATA_SENSOR_DB_URL": " "}
    assert db_roles.db_url_for("stager", env) == "postgresql+psycopg2://s:p@db/m"
    assert db_roles.db_url_for("sensor", env) is None
    assert db_roles.db_url_for("auditor", {}) is None
    with pytest.raises(SettingsError, match="no metadata-DB role"):
        db_roles.db_url_for("audit", env)


def test_every_worker_has_a_db_role_and_every_table_granted_exists_in_the_schema():
    assert {entry.db_role for entry in WORKERS.values()} | {db_roles.SENSOR_DB_ROLE} == set(db_roles.DB_GRANTS)
    for grants in db_roles.DB_GRANTS.values():
        assert set(grants) <= set(Base.metadata.tables)
        assert all(set(privileges) <= set(db_roles.PRIVILEGES) for privileges in grants.values())


@pytest.fixture
def each_worker_on_its_role(applied, role_server, monkeypatch) -> dict[str, str]:
    """The daemon's environment in Docker mode: the sensor's DB URL and S3 keys as its own, every
    worker's to hand on (the launcher gives each worker its DB role's URL as METADATA_DB_URL)."""
    env = {
        **roles_env(role_server.endpoint, ROLE_KEYS["sensor"]),
        **applied,
        "METADATA_DB_URL": applied[db_roles.url_variable(db_roles.SENSOR_DB_ROLE)],
        "WORKER_LAUNCH_MODE": "subprocess",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.mark.dagster_runs
def test_the_intake_runs_end_to_end_with_each_worker_on_its_own_db_role(each_worker_on_its_role, applied, role_server):
    root = role_server.client()
    launcher = {"launcher": WorkerLauncher()}
    assert dg.materialize([bootstrap_heartbeat_asset], resources=launcher).success
    assert dg.materialize([sync_layout_registry], resources=launcher).success
    drop_files(root, BUCKET, GROUP, {"medical_claims.csv": b"m,a\n1,2\n"})
    root.put_object(Bucket=BUCKET, Key="inbox/acme/too-shallow.csv", Body=b"x\n")
    instance = dg.DagsterInstance.ephemeral()

    # The sensor, in this process, records the shallow key as the sensor role.
    tick = inbox_discovery_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    (request,) = tick.run_requests
    result = register_submission_from_group_job.execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance, resources=launcher
    )

    assert result.success
    assert run_check().passed
    # Looked at as the owner, whose URL the daemon's environment does not hold.
    assert os.environ["METADATA_DB_URL"] != applied["METADATA_DB_URL"]
    owner = sa.create_engine(applied["METADATA_DB_URL"])
    with owner.connect() as conn:
        assert conn.scalar(sa.select(Submission.status)) == "staged"
        assert conn.scalar(sa.select(InboxRejection.key)) == "inbox/acme/too-shallow.csv"
        assert conn.scalar(sa.text("SELECT count(*) FROM bootstrap_heartbeat")) == 1
    owner.dispose()
    for key in ("inbox/acme/too-shallow.csv", "bootstrap/hello.txt"):
        root.delete_object(Bucket=BUCKET, Key=key)
    for obj in root.list_objects_v2(Bucket=BUCKET, Prefix="raw/").get("Contents", []):
        root.delete_object(Bucket=BUCKET, Key=obj["Key"])


def test_the_launcher_hands_each_worker_its_db_roles_url_as_its_metadata_db_url():
    env = {"METADATA_DB_URL": "postgresql+psycopg2://intake_sensor:s@db/m"}
    for role in db_roles.DB_GRANTS:
        env[db_roles.url_variable(role)] = f"postgresql+psycopg2://intake_{role}:p@db/m"

    for entry in WORKERS.values():
        given = resources.worker_env(entry, env)["METADATA_DB_URL"]
        assert given == env[db_roles.url_variable(entry.db_role)], entry.name
    # Dev mode: no role URLs, one METADATA_DB_URL for every worker.
    assert resources.worker_env(worker("stager"), {"METADATA_DB_URL": "sqlite://"})["METADATA_DB_URL"] == "sqlite://"
