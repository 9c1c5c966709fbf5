"""After the whole intake with sentinel credentials, a sentinel in a file's body and a sentinel in
object keys (a file name and a drop folder name), no sentinel appears in Dagster's event log, run
storage, run configs, tags, run keys, sensor cursors, compute logs, worker output or error
messages; the key sentinel only in the one place the run config contract puts it, the run
config's grouping_key.

Runs in both launch modes: worker processes, and worker containers (the Docker launcher on the
host's network, as tests/docker does it).
"""

import logging
import os
import re
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
from tests.containers import IMAGE_TAG
from tests.helpers import drop_files
from tests.services import PG_ADMIN_URL, S3Server, migrate, start_s3_server, stop_process_group, wait_for_s3
from workers.store import ensure_bucket

ACCESS_KEY = "AKIASENTINELACCESS7"
SECRET_KEY = "SENTINEL-SECRET-KEY-9f3a"
DB_PASSWORD = "SENTINEL-DB-PASSWORD-51c2"
PHI = "SENTINEL-PHI John Q Patient 123-45-6789"
# A member's name in a partner's object keys: one sentinel for every key, so one scan finds them all.
KEY_PHI = "SENTINEL-KEYPHI"
DROP_NAME = f"{KEY_PHI}-Jane-Roe-1970-01-01"
FILE_NAME = f"medical_claims_{KEY_PHI}-John-Q-Patient.csv"
GROUP = f"inbox/acme/unknown/{DROP_NAME}/"
STAGE_FAILS_GROUP = f"inbox/acme/unknown/{DROP_NAME}-second/"
LOOSE_KEY = f"inbox/acme/{KEY_PHI}-Richard-Roe.csv"  # forms no group: rejected, logged and observed
SQL_ERROR_KEY = f"inbox/acme/{KEY_PHI}-sql-error.csv"
SENTINELS = (ACCESS_KEY, SECRET_KEY, DB_PASSWORD, PHI, KEY_PHI)
# The run config contract (register_submission_from_group_job's grouping_key) is the one place
# outside the metadata DB and the object store where a key may appear.
RUN_CONFIG_GROUPING_KEY = re.compile(r'"grouping_key\\?"\s*:\s*\\?"' + re.escape("inbox/acme/unknown/") + KEY_PHI)


def launcher_for(mode: str, request: pytest.FixtureRequest) -> WorkerLauncher:
    """The one place this test picks a launch mode."""
    if mode == "docker":
        request.getfixturevalue("images")
        monkeypatch = request.getfixturevalue("monkeypatch")
        # As the deployment's environment sets it; the containers reach 127.0.0.1 on the host network.
        monkeypatch.setenv("WORKER_LAUNCH_MODE", "docker")
        monkeypatch.setenv("WORKER_DOCKER_NETWORK", "host")
        monkeypatch.setenv("WORKER_IMAGE_TAG", IMAGE_TAG)
    return WorkerLauncher()


@pytest.fixture
def sentinel_platform(tmp_path, postgres_url, monkeypatch):
    proc, port = start_s3_server(tmp_path / "s3", tmp_path / "s3.log", keys=(ACCESS_KEY, SECRET_KEY))
    server = S3Server(f"http://127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY)
    wait_for_s3(server, proc, tmp_path / "s3.log")
    ensure_bucket(server.client(), "health-raw")
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
    text = RUN_CONFIG_GROUPING_KEY.sub("", text)
    return [s for s in SENTINELS if s in text]


def sentinels_under(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            hits = sentinels_in(path.read_bytes().decode("utf-8", "replace"))
            if hits:
                found[str(path)] = hits
    return found


def without_grouping_key(run_config: dict) -> dict:
    ops = dict(run_config.get("ops", {}))
    if "register_submission_from_group" in ops:
        config = dict(ops["register_submission_from_group"]["config"])
        assert config.pop("grouping_key").startswith("inbox/acme/")
        ops["register_submission_from_group"] = {"config": config}
    return {**run_config, "ops": ops}


class Warnings(logging.Handler):
    """The warnings a sensor tick logged, as an operator reads them in the tick's log."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def take(self, containing: str) -> list[str]:
        found = [m for m in self.messages if containing in m]
        assert found, f"no warning containing {containing!r}: {self.messages}"
        return found


class Intake:
    """Drives the intake as the daemon would: sensor ticks, then the runs they request."""

    def __init__(self, instance: dg.DagsterInstance, launcher: WorkerLauncher):
        self.instance, self.launcher = instance, launcher
        self.cursor: str | None = None
        self.cursors: list[str] = []  # Dagster stores each and shows the latest on the sensor's page
        self.run_keys: list[str] = []
        self.errors: list[str] = []
        self.warnings = Warnings()

    def tick(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(instance=self.instance, definitions=defs, cursor=self.cursor)
        context.log.addHandler(self.warnings)
        result = inbox_discovery_sensor.evaluate_tick(context)
        self.cursor = result.cursor
        self.cursors.append(result.cursor)
        self.run_keys += [r.run_key for r in result.run_requests]
        return result.run_requests

    def degraded_tick(self) -> None:
        """A tick whose bookkeeping write fails: it fails soft (sensors.record_shallow), and the
        warning it logs instead, with the database's refusal in it, is what is scanned."""
        self.tick()
        self.errors += self.warnings.take("not recorded this tick")

    def run(self, request: dg.RunRequest, **kwargs) -> dg.ExecuteInProcessResult:
        result = register_submission_from_group_job.execute_in_process(
            run_config=request.run_config,
            tags={**request.tags, "dagster/run_key": request.run_key},
            instance=self.instance,
            resources={"launcher": self.launcher},
            raise_on_error=False,
            **kwargs,
        )
        self.errors += [e.step_failure_data.error.to_string() for e in result.get_step_failure_events()]
        return result


def intake_with_keys_and_bodies_holding_phi(intake: Intake, server: S3Server) -> None:
    resources = {"launcher": intake.launcher}
    assert dg.materialize(
        [bootstrap_heartbeat_asset, sync_layout_registry], resources=resources, instance=intake.instance
    ).success
    s3 = server.client()
    drop_files(s3, "health-raw", GROUP, {FILE_NAME: PHI.encode() + b",100\n"})
    s3.put_object(Bucket="health-raw", Key=LOOSE_KEY, Body=b"loose")
    (request,) = intake.tick()
    assert intake.run(request).success

    # A worker's error naming a file: the inbox copy vanishes between registration and staging.
    drop_files(s3, "health-raw", STAGE_FAILS_GROUP, {FILE_NAME: PHI.encode() + b",200\n"})
    (request,) = intake.tick()
    registered = intake.run(request, op_selection=["register_submission_from_group"])
    submission_id = registered.output_for_node("register_submission_from_group")
    s3.delete_object(Bucket="health-raw", Key=STAGE_FAILS_GROUP + FILE_NAME)
    staging = {"ops": {"stage_submission": {"inputs": {"submission_id": submission_id}}}}
    request = dg.RunRequest(run_key=None, run_config=staging, tags=request.tags)
    assert not intake.run(request, op_selection=["stage_submission"]).success

    # An SQL error whose statement carries a key: the metadata DB refuses every write.
    s3.put_object(Bucket="health-raw", Key=SQL_ERROR_KEY, Body=b"sql")
    with read_only(sa.make_url(os.environ["METADATA_DB_URL"]).database):
        intake.degraded_tick()


class read_only:
    """The database refuses writes from new connections while inside (a real server-side refusal)."""

    def __init__(self, database: str):
        self.database = database

    def _set(self, value: str) -> None:
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{self.database}" SET default_transaction_read_only = {value}'))
        admin.dispose()

    def __enter__(self):
        self._set("on")

    def __exit__(self, *_):
        self._set("off")


def failing_run(instance: dg.DagsterInstance, launcher: WorkerLauncher, monkeypatch) -> str:
    monkeypatch.setenv("METADATA_DB_URL", f"postgresql+psycopg2://intake:{DB_PASSWORD}@127.0.0.1:1/metadata")
    result = dg.materialize(
        [bootstrap_heartbeat_asset], resources={"launcher": launcher}, instance=instance, raise_on_error=False
    )
    assert not result.success
    return result.get_step_failure_events()[0].step_failure_data.error.to_string()


@pytest.mark.parametrize("launch_mode", ["subprocess", pytest.param("docker", marks=pytest.mark.containers)])
def test_no_credential_file_content_or_object_key_leaves_the_metadata_db_and_object_store(
    launch_mode, request, sentinel_platform, tmp_path, capfd, monkeypatch, ledger
):
    launcher = launcher_for(launch_mode, request)
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        intake = Intake(instance, launcher)
        intake_with_keys_and_bodies_holding_phi(intake, sentinel_platform)
        error = failing_run(instance, launcher, monkeypatch)
        runs = instance.get_runs()
        configs_and_tags = repr([(without_grouping_key(run.run_config), run.tags) for run in runs])
        events = repr(
            [record.event_log_entry for run in runs for record in instance.get_records_for_run(run.run_id).records]
        )
    output = capfd.readouterr()

    leaks = {
        "dagster home (event log, compute logs, run storage)": sentinels_under(home),
        "run configs (but their grouping_key) and tags": sentinels_in(configs_and_tags),
        "sensor run keys and cursors": sentinels_in(repr([*intake.run_keys, *intake.cursors])),
        "event log entries (metadata, observations, logs)": sentinels_in(events),
        "worker and orchestrator output": sentinels_in(output.out + output.err),
        "error messages (steps, workers, a failed tick's SQL error)": sentinels_in(repr([*intake.errors, error])),
    }
    found = {where: hits for where, hits in leaks.items() if hits}
    ledger.update(secrets_scans=1, secrets_found=sum(len(h) for h in found.values()))
    assert found == {}
    # The stager's refusal and the degraded tick's warning (the database's refusal) were scanned.
    assert len(intake.errors) == 2, intake.errors
    assert "read-only transaction" in intake.errors[-1]
    # The PHI really went through the platform: body and key are in the raw zone, where they belong.
    s3 = sentinel_platform.client()
    raw = s3.list_objects_v2(Bucket="health-raw", Prefix="raw/acme/")["Contents"]
    assert any(o["Key"].endswith(FILE_NAME) for o in raw)
    bodies = [s3.get_object(Bucket="health-raw", Key=o["Key"])["Body"].read() for o in raw]
    assert any(PHI.encode() in body for body in bodies)


def test_the_scan_finds_a_planted_sentinel(tmp_path):
    """The scanner itself can fail: a sentinel written where it looks is found."""
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "log.txt").write_text(f"oops {SECRET_KEY}")
    assert sentinels_under(tmp_path) == {str(tmp_path / "nested" / "log.txt"): [SECRET_KEY]}


def test_the_scan_allows_a_key_only_as_the_run_configs_grouping_key():
    config = '{"ops": {"register_submission_from_group": {"config": {"grouping_key": "' + GROUP + '"}}}}'
    assert sentinels_in(config) == []
    assert sentinels_in(f"nothing registered for {GROUP}") == [KEY_PHI]
    assert sentinels_in('{"label": "grouping_key", "text": "' + GROUP + '"}') == [KEY_PHI]
