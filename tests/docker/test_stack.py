"""`docker-compose up` of the whole stack, then the heartbeat through the webserver's GraphQL API and
a drop with _SUCCESS through the sensor, each checked in metadata_postgres and the object store.

Where quay.io/minio/minio cannot be pulled the stack runs the S3 stand-in that
scripts/container_engine.sh builds (images/standins/, test scaffolding) through MINIO_IMAGE.
"""

import json
import subprocess
import time
import urllib.request
import uuid

import boto3
import docker.errors
import pytest

from tests.conftest import REPO, free_port_block
from tests.docker.conftest import compose_env_file

# Names of the test's own, so a stack already running on the engine is left alone.
PROJECT = f"health-intake-test-{uuid.uuid4().hex[:8]}"
S3_STANDIN = "localhost/health-intake-standin-s3:latest"
GROUP = "inbox/acme/unknown/drop-001/"
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
HEARTBEAT = {
    "selector": {
        "repositoryLocationName": "health_intake",
        "repositoryName": "__repository__",
        "jobName": "__ASSET_JOB",
        "assetSelection": [{"path": ["bootstrap_heartbeat_asset"]}],
    },
    "runConfigData": {},
}


class Stack:
    def __init__(self, env_file, settings: dict[str, str]):
        self.env_file = env_file
        self.settings = settings

    def make(self, target: str, **variables: str) -> subprocess.CompletedProcess:
        """A README `make` target against this test's stack."""
        compose = f"docker-compose -p {PROJECT} --env-file {self.env_file}"
        args = [f"{k}={v}" for k, v in variables.items()]
        return subprocess.run(
            ["make", "-s", target, f"COMPOSE={compose}", *args], cwd=REPO, capture_output=True, text=True, timeout=300
        )

    def compose(self, *args: str) -> subprocess.CompletedProcess:
        command = ["docker-compose", "-p", PROJECT, "--env-file", str(self.env_file), *args]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)

    def graphql(self, query: str, variables: dict) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        url = f"http://127.0.0.1:{self.settings['DAGSTER_PORT']}/graphql"
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["data"]

    def s3(self):
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.settings['MINIO_PORT']}",
            aws_access_key_id=self.settings["MINIO_ACCESS_KEY"],
            aws_secret_access_key=self.settings["MINIO_SECRET_KEY"],
            region_name="us-east-1",
        )

    def sql(self, statement: str) -> str:
        done = self.make("psql", SQL=statement)
        assert done.returncode == 0, done.stderr
        return done.stdout


def stack_settings(engine, env_file) -> dict[str, str]:
    ports = {name: str(free_port_block(1)) for name in ("DAGSTER_PORT", "METADATA_POSTGRES_PORT", "MINIO_PORT")}
    ports["MINIO_CONSOLE_PORT"] = str(free_port_block(1))
    lines = [line for line in env_file.read_text().splitlines() if line.split("=")[0] not in ports]
    settings = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    try:
        engine.images.get(settings["MINIO_IMAGE"])
    except docker.errors.ImageNotFound:
        settings["MINIO_IMAGE"] = S3_STANDIN
        # The stand-in (SeaweedFS) reads the rendered roles when it starts; there is no `mc`.
        settings["S3_ROLES_PROVISIONING"] = "static"
    settings.update(ports, SENSOR_INTERVAL_SECONDS="5", WORKER_DOCKER_NETWORK=PROJECT)
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return settings


@pytest.fixture(scope="module")
def stack(images, engine, tmp_path_factory):
    env_file = compose_env_file(tmp_path_factory.mktemp("stack"))
    stack = Stack(env_file, stack_settings(engine, env_file))
    started = time.monotonic()
    try:
        up = stack.compose("up", "-d")
        assert up.returncode == 0, up.stderr[-3000:]
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{stack.settings['DAGSTER_PORT']}/server_info", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, stack.compose("logs", "--tail=50").stdout[-4000:]
                time.sleep(2)
        print(f"docker-compose up to a healthy stack: {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans")


def test_every_long_running_service_is_healthy_and_the_one_shot_steps_succeeded(stack, engine):
    def state(service: str) -> dict:
        (container_id,) = stack.compose("ps", "-q", service).stdout.split()
        return engine.containers.get(container_id).attrs["State"]

    for service in ("dagster_postgres", "metadata_postgres", "minio"):
        assert state(service)["Health"]["Status"] == "healthy", service
    for service in ("dagster_webserver", "dagster_daemon"):
        assert state(service)["Running"], service
    for one_shot in ("migrations", "db_roles", "minio_init", "roles_render", "roles_apply", "roles_check"):
        assert (state(one_shot)["Running"], state(one_shot)["ExitCode"]) == (False, 0), one_shot


def test_the_heartbeat_through_graphql_writes_its_row_and_its_object(stack):
    launched = stack.graphql(LAUNCH, {"params": HEARTBEAT})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 180
    while (status := stack.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]) not in ("SUCCESS", "FAILURE"):
        assert time.monotonic() < deadline, status
        time.sleep(2)

    assert status == "SUCCESS", stack.compose("logs", "--tail=80", "dagster_daemon").stdout[-4000:]
    assert "phase0_ok" in stack.sql("select id, message from bootstrap_heartbeat")
    head = stack.s3().head_object(Bucket=stack.settings["MINIO_BUCKET"], Key="bootstrap/hello.txt")
    assert head["ContentLength"] > 0


def test_a_drop_with_its_marker_ends_staged_inside_the_stack(stack):
    s3 = stack.s3()
    bucket = stack.settings["MINIO_BUCKET"]
    body = (REPO / "examples/drop-001/medical_claims.csv").read_bytes()
    s3.put_object(Bucket=bucket, Key=GROUP + "medical_claims.csv", Body=body)
    s3.put_object(Bucket=bucket, Key=GROUP + "_SUCCESS", Body=b"")

    deadline = time.monotonic() + 240
    while "staged" not in stack.sql("select status from submission"):
        assert time.monotonic() < deadline, stack.compose("logs", "--tail=80", "dagster_daemon").stdout[-4000:]
        time.sleep(3)
    raw = s3.list_objects_v2(Bucket=bucket, Prefix="raw/acme/")["Contents"]
    assert any(obj["Key"].endswith("/medical_claims.csv") for obj in raw)


def test_the_dagster_cli_in_the_webserver_container_materializes_the_heartbeat(stack):
    done = stack.make(
        "dagster-cli", CMD="asset materialize -m orchestrator.definitions --select bootstrap_heartbeat_asset"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RUN_SUCCESS" in done.stdout + done.stderr


def test_the_roles_gate_passed_and_the_dagster_services_hold_no_root_key(stack):
    # roles_check probed every role against the stack's object store before Dagster started.
    checked = stack.compose("logs", "--no-color", "roles_check").stdout
    probes = [line for line in checked.splitlines() if "| ok " in line or "| BAD " in line]
    assert len(probes) == 126 and all("| ok " in line for line in probes), checked[-3000:]
    for service in ("dagster_webserver", "dagster_daemon"):
        env = stack.compose("exec", "-T", service, "env").stdout
        assert stack.settings["MINIO_SECRET_KEY"] not in env, service
    daemon = stack.compose("exec", "-T", "dagster_daemon", "env").stdout.splitlines()
    assert f"MINIO_SECRET_KEY={stack.settings['MINIO_SENSOR_SECRET_KEY']}" in daemon
    # So the heartbeat and the staged drop above wrote bootstrap/ and raw/ with their own roles'
    # keys: the sensor keys the daemon holds are refused there.
    refused = stack.compose(
        "exec",
        "-T",
        "dagster_daemon",
        "python",
        "-c",
        "import sys; from botocore.exceptions import ClientError; from workers.settings import load_settings; "
        "from workers.store import make_s3_client; s = load_settings()\n"
        "try: make_s3_client(s).put_object(Bucket=s.bucket, Key='bootstrap/x', Body=b'')\n"
        "except ClientError as e: sys.exit(0 if e.response['Error']['Code'] == 'AccessDenied' else 3)\n"
        "sys.exit(4)",
    )
    assert refused.returncode == 0, refused.stdout + refused.stderr


def test_each_process_holds_only_its_own_credentials_and_the_db_roles_gate_passed(stack):
    """Item 4 of issue 10, at the stack level: the webserver holds no worker key and no DB login,
    the daemon no owner or root secret, and db_roles proved every DB grant and refusal."""
    secrets_of_workers = [
        value
        for name, value in stack.settings.items()
        if value and (name.endswith(("_SECRET_KEY", "_DB_PASSWORD")) or name == "METADATA_POSTGRES_PASSWORD")
    ]
    webserver = stack.compose("exec", "-T", "dagster_webserver", "env").stdout
    assert [s for s in secrets_of_workers if s in webserver] == []
    daemon = stack.compose("exec", "-T", "dagster_daemon", "env").stdout
    for owner_or_root in ("METADATA_POSTGRES_PASSWORD", "MINIO_SECRET_KEY"):
        assert stack.settings[owner_or_root] not in daemon, owner_or_root
    assert f"METADATA_DB_URL=postgresql+psycopg2://intake_sensor:{stack.settings['METADATA_SENSOR_DB_PASSWORD']}@" in (
        daemon
    )
    gate = stack.compose("logs", "--no-color", "db_roles").stdout
    probes = [line for line in gate.splitlines() if "| ok " in line or "| BAD " in line]
    assert probes and all("| ok " in line for line in probes), gate[-3000:]
    assert any("stager     DELETE submission" in line and "refused" in line for line in probes)
