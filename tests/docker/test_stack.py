"""`make up`'s script brings up the whole stack; then the heartbeat through the operator UI's GraphQL
API (through ui_proxy, with the operator's login) and a drop with _SUCCESS through the sensor, each
checked in metadata_postgres and the object store; then who may reach the UI and the engine socket.

Where quay.io/minio/minio cannot be pulled the stack runs the S3 stand-in that
scripts/container_engine.sh builds (images/standins/, test scaffolding), selected by MINIO_IMAGE
alone, as the README says. nginx is the official image or, where it cannot be pulled, its stand-in.
"""

import base64
import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

import boto3
import docker.errors
import pytest

from tests.containers import compose_env_file
from tests.services import REPO, free_port_block
from workers import roles
from workers.inbox import group_id

# Names of the test's own, so a stack already running on the engine is left alone.
PROJECT = f"health-intake-test-{uuid.uuid4().hex[:8]}"
S3_STANDIN = "localhost/health-intake-standin-s3:latest"
GROUP = "inbox/acme/unknown/drop-001/"
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on UnauthorizedError { message } } }"""
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

    def compose(self, *args: str, files: tuple[str, ...] = (), env: dict[str, str] | None = None):
        """docker-compose against this test's stack; `files` adds override files to docker-compose.yml."""
        chosen = [arg for name in ("docker-compose.yml", *files) for arg in ("-f", str(REPO / name))] if files else []
        command = ["docker-compose", "-p", PROJECT, "--env-file", str(self.env_file), *chosen, *args]
        return subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
        )

    def graphql(self, query: str, variables: dict, ui: str = "operator") -> dict:
        """A GraphQL request through ui_proxy, with the login of `ui` (operator or viewer)."""
        user, password = self.login(ui)
        return graphql_response(self.ui_url(ui), query, variables, user, password)["data"]

    def login(self, ui: str) -> tuple[str, str]:
        return self.settings[f"UI_{ui.upper()}_USER"], self.settings[f"UI_{ui.upper()}_PASSWORD"]

    def ui_url(self, ui: str) -> str:
        port = self.settings["DAGSTER_PORT" if ui == "operator" else "DAGSTER_VIEWER_PORT"]
        return f"http://127.0.0.1:{port}"

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


def graphql_response(url: str, query: str, variables: dict, user: str | None, password: str | None) -> dict:
    """The JSON answer of POST url/graphql, with HTTP basic credentials when a user is given."""
    body = json.dumps({"query": query, "variables": variables}).encode()
    headers = {"Content-Type": "application/json"}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(f"{url}/graphql", body, headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def graphql_status(url: str, user: str | None = None, password: str | None = None) -> int:
    try:
        graphql_response(url, "{ version }", {}, user, password)
    except urllib.error.HTTPError as refused:
        return refused.code
    return 200


def stack_settings(engine, env_file) -> dict[str, str]:
    port_names = ("DAGSTER_PORT", "DAGSTER_VIEWER_PORT", "METADATA_POSTGRES_PORT", "MINIO_PORT", "MINIO_CONSOLE_PORT")
    ports = {name: str(free_port_block(1)) for name in port_names}
    lines = [line for line in env_file.read_text().splitlines() if line.split("=")[0] not in ports]
    settings = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    try:
        engine.images.get(settings["MINIO_IMAGE"])
    except docker.errors.ImageNotFound:
        # The README's one setting for the stand-in; roles_apply reads the rest from the image.
        settings["MINIO_IMAGE"] = S3_STANDIN
    settings.update(ports, SENSOR_INTERVAL_SECONDS="5", WORKER_DOCKER_NETWORK=PROJECT)
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return settings


@pytest.fixture(scope="module")
def stack(images, engine, tmp_path_factory):
    env_file = compose_env_file(tmp_path_factory.mktemp("stack"))
    stack = Stack(env_file, stack_settings(engine, env_file))
    started = time.monotonic()
    try:
        up = subprocess.run(
            ["./scripts/stack_up.sh"],
            cwd=REPO,
            env={**os.environ, "COMPOSE": f"docker-compose -p {PROJECT} --env-file {env_file}"},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert up.returncode == 0, up.stderr[-4000:]
        print(f"make up's script to a UI answering through ui_proxy: {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans")


def test_every_long_running_service_is_healthy_and_the_one_shot_steps_succeeded(stack, engine):
    def state(service: str) -> dict:
        (container_id,) = stack.compose("ps", "-q", service).stdout.split()
        return engine.containers.get(container_id).attrs["State"]

    for service in ("dagster_postgres", "metadata_postgres", "minio", "nats", "dagster_webserver", "dagster_viewer"):
        assert state(service)["Health"]["Status"] == "healthy", service
    for service in ("dagster_daemon", "ui_proxy"):
        assert state(service)["Running"], service
    one_shots = (*ONE_SHOT_STEPS, "ui_auth_render")
    for one_shot in one_shots:
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


def test_the_dagster_cli_in_the_daemon_container_materializes_the_heartbeat(stack):
    done = stack.make(
        "dagster-cli", CMD="asset materialize -m orchestrator.definitions --select bootstrap_heartbeat_asset"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RUN_SUCCESS" in done.stdout + done.stderr


def test_the_roles_gate_passed_and_the_dagster_services_hold_no_root_key(stack):
    # roles_check probed every role against the stack's object store before Dagster started.
    checked = stack.compose("logs", "--no-color", "roles_check").stdout
    probes = [line for line in checked.splitlines() if "| ok " in line or "| BAD " in line]
    count = len(roles.GRANTS) * len(roles.PROBES) * len(roles.AREAS)
    assert len(probes) == count and all("| ok " in line for line in probes), checked[-3000:]
    for service in ("dagster_webserver", "dagster_viewer", "dagster_daemon"):
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


def container(stack, engine, service: str):
    (container_id,) = stack.compose("ps", "-q", service).stdout.split()
    return engine.containers.get(container_id)


def test_only_the_engine_proxy_holds_the_socket_and_the_dagster_services_run_unprivileged(stack, engine):
    def mounts(service: str) -> set[str]:
        return {mount["Destination"] for mount in container(stack, engine, service).attrs["Mounts"]}

    assert "/var/run/docker.sock" in mounts("engine_proxy")
    for service in ("dagster_webserver", "dagster_viewer", "dagster_daemon", "ui_proxy"):
        assert "/var/run/docker.sock" not in mounts(service), service
    for service in ("dagster_webserver", "dagster_viewer", "dagster_daemon"):
        uid = stack.compose("exec", "-T", service, "id", "-u")
        assert uid.returncode == 0 and uid.stdout.strip() not in ("", "0"), (service, uid.stdout)


ENGINE_CALL = """import sys, docker
try:
    engine = docker.DockerClient(base_url="tcp://engine_proxy:2375", timeout=10)
    {call}
except docker.errors.APIError as refused:
    print("refused", refused.status_code); sys.exit(3)
"""


def engine_call(stack, service: str, call: str) -> str:
    """An engine API call from inside a service: "done", or "refused <HTTP status>"."""
    done = stack.compose("exec", "-T", service, "python", "-c", ENGINE_CALL.format(call=call))
    assert done.returncode in (0, 3), done.stderr[-2000:]
    return done.stdout.strip() or "done"


def test_the_webservers_cannot_reach_the_engine(stack):
    for service in ("dagster_webserver", "dagster_viewer"):
        lookup = "import socket; socket.getaddrinfo('engine_proxy', 2375)"
        done = stack.compose("exec", "-T", service, "python", "-c", lookup)
        assert done.returncode == 1 and "gaierror" in done.stderr, (service, done.stderr[-1000:])


def test_the_engine_proxy_lets_the_daemon_list_containers_and_refuses_volumes_exec_and_system_calls(stack):
    assert engine_call(stack, "dagster_daemon", "engine.containers.list(limit=1)") == "done"
    for forbidden in ("engine.volumes.list()", "engine.api.exec_create('any-container', 'id')", "engine.info()"):
        assert engine_call(stack, "dagster_daemon", forbidden) == "refused 403", forbidden


def test_only_the_proxy_publishes_ports_for_the_ui_and_only_on_localhost(stack, engine):
    for service in ("dagster_webserver", "dagster_viewer"):
        published = container(stack, engine, service).attrs["NetworkSettings"]["Ports"] or {}
        assert not any(bindings for bindings in published.values()), (service, published)
    proxy_ports = container(stack, engine, "ui_proxy").attrs["NetworkSettings"]["Ports"]
    bindings = [binding for port in ("8080/tcp", "8081/tcp") for binding in proxy_ports[port]]
    assert {binding["HostIp"] for binding in bindings} == {"127.0.0.1"}, proxy_ports


def test_the_ui_without_credentials_or_with_a_wrong_password_gets_401(stack):
    for ui in ("operator", "viewer"):
        user, password = stack.login(ui)
        assert graphql_status(stack.ui_url(ui)) == 401, ui
        assert graphql_status(stack.ui_url(ui), user, password + "x") == 401, ui
        assert graphql_status(stack.ui_url(ui), user, password) == 200, ui


def test_viewer_credentials_do_not_open_the_operator_ui(stack):
    assert graphql_status(stack.ui_url("operator"), *stack.login("viewer")) == 401


def test_the_read_only_ui_refuses_a_launch_with_the_viewers_login(stack):
    launched = stack.graphql(LAUNCH, {"params": HEARTBEAT}, ui="viewer")["launchRun"]
    print(f"the read-only UI answers launchRun with: {launched}")
    assert launched["__typename"] == "UnauthorizedError", launched


def test_the_health_endpoints_answer_without_credentials_and_reveal_nothing(stack):
    for ui in ("operator", "viewer"):
        with urllib.request.urlopen(f"{stack.ui_url(ui)}/healthz", timeout=10) as response:
            assert (response.status, response.read()) == (204, b""), ui
            assert "dagster" not in str(response.headers).lower(), ui


def test_the_proxy_holds_only_password_hashes_and_no_log_shows_a_password(stack):
    for ui in ("operator", "viewer"):
        user, password = stack.login(ui)
        htpasswd = stack.compose("exec", "-T", "ui_proxy", "cat", f"/auth/{ui}.htpasswd").stdout
        assert htpasswd.startswith(f"{user}:$6$"), ui
        assert password not in htpasswd, ui
    logs = stack.compose("logs", "--no-color").stdout
    assert "ui_access: wrote" in logs
    for ui in ("operator", "viewer"):
        assert stack.login(ui)[1] not in logs, ui


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


# --- Convergence in Docker mode (issue 11): a worker container or the daemon killed mid-copy ----

# Enough files, and big enough, that the stager's copies take a while to catch it in the middle of.
CONVERGE_FILES, CONVERGE_FILE_BYTES = 40, 5_000_000
GROUP_RUNS = """query($group: String!) { runsOrError(filter: {tags: [{key: "health-intake/group", value: $group}]}) {
  ... on Runs { results { runId status jobName } } } }"""


def drop_many(
    stack, group: str, stem: str, count: int = CONVERGE_FILES, size: int = CONVERGE_FILE_BYTES
) -> dict[str, bytes]:
    files = {f"{stem}_{n:02d}.csv": os.urandom(size) for n in range(count)}
    s3 = stack.s3()
    for name, body in files.items():
        s3.put_object(Bucket=stack.settings["MINIO_BUCKET"], Key=group + name, Body=body)
    s3.put_object(Bucket=stack.settings["MINIO_BUCKET"], Key=group + "_SUCCESS", Body=b"")
    return files


def raw_copies(stack, files: dict[str, bytes]) -> list[dict]:
    pages = stack.s3().get_paginator("list_objects_v2").paginate(Bucket=stack.settings["MINIO_BUCKET"], Prefix="raw/")
    return [obj for page in pages for obj in page.get("Contents", []) if obj["Key"].rsplit("/", 1)[-1] in files]


def stager_mid_copy(stack, engine, files: dict[str, bytes], timeout: float = 300):
    """The stager's container once some, not all, of the drop's files are in raw/."""
    deadline = time.monotonic() + timeout
    while True:
        running = engine.containers.list(filters={"label": "health-intake.worker=stager", "network": PROJECT})
        if running and 0 < len(raw_copies(stack, files)) < len(files):
            return running[0]
        assert time.monotonic() < deadline, (
            "no stager was caught mid-copy: " + stack.compose("logs", "--tail=60", "dagster_daemon").stdout[-3000:]
        )
        time.sleep(0.05)


def group_runs(stack, group: str) -> list[dict]:
    return stack.graphql(GROUP_RUNS, {"group": group_id(group)})["runsOrError"]["results"]


def wait_converged(stack, group: str, files: dict[str, bytes], timeout: float = 480) -> float:
    """Seconds until the group's one submission is staged, each file once in raw/ with its own bytes
    (an MD5 ETag: one-part copies) and the inbox holds nothing of the group."""
    began = time.monotonic()

    def statuses() -> list[str]:  # no quotes in the SQL: `make psql SQL=...` puts it in sh -c '...'
        rows = [row.split("|") for row in stack.sql("select grouping_key, status from submission").splitlines()]
        return [row[1].strip() for row in rows if len(row) == 2 and row[0].strip() == group]

    while "staged" not in statuses():
        assert time.monotonic() - began < timeout, (group_runs(stack, group), statuses())
        time.sleep(3)
    assert statuses() == ["staged"], statuses()
    copies = raw_copies(stack, files)
    assert sorted(obj["Key"].rsplit("/", 1)[-1] for obj in copies) == sorted(files), "lost or duplicated copies"
    for obj in copies:
        assert obj["ETag"].strip('"') == hashlib.md5(files[obj["Key"].rsplit("/", 1)[-1]]).hexdigest(), obj["Key"]
    left = stack.s3().list_objects_v2(Bucket=stack.settings["MINIO_BUCKET"], Prefix=group).get("KeyCount", 0)
    assert left == 0, f"{left} object(s) of the group left in the inbox"
    return time.monotonic() - began


def test_a_worker_container_killed_mid_copy_is_retried_and_the_drop_ends_staged_once(stack, engine):
    group = "inbox/acme/unknown/worker-killed/"
    files = drop_many(stack, group, "wk")
    stager = stager_mid_copy(stack, engine, files)
    stager.kill()

    seconds = wait_converged(stack, group, files)
    print(f"worker container killed mid-copy: staged {seconds:.0f} s after the kill")
    # Staged is recorded before the run ends (the receipt, the catalog's entry and the run's own
    # end come after): wait for the run to end. The step's own retry, in the same run.
    wait_for(
        "the run's end",
        lambda: all(r["status"] not in RUNNING for r in group_runs(stack, group)),
        120,
        lambda: group_runs(stack, group),
    )
    (run,) = group_runs(stack, group)
    assert run["status"] == "SUCCESS", run
    log = stack.graphql(
        "query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events { __typename } } } }",
        {"id": run["runId"]},
    )
    kinds = [event["__typename"] for event in log["logsForRun"]["events"]]
    assert "ExecutionStepUpForRetryEvent" in kinds, kinds


RUNNING = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def wait_for(what: str, check, timeout: float, explain) -> float:
    """Seconds until check() is true; fails naming `what` with explain()'s account of the stack."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout, f"{what} not within {timeout:.0f} s: {explain()}"
        time.sleep(3)
    return time.monotonic() - began


ONE_SHOT_STEPS = (
    "migrations",
    "db_roles",
    "minio_init",
    "events_init",
    "store_check",
    "roles_render",
    "roles_apply",
    "roles_check",
)


def why_up_failed(stack, up: subprocess.CompletedProcess) -> str:
    """`up -d` re-runs the one-shot set-up steps; when it fails, each step's state and last lines."""
    ps = stack.compose("ps", "-a").stdout
    logs = {step: stack.compose("logs", "--no-color", "--tail=25", step).stdout for step in ONE_SHOT_STEPS}
    shown = "\n".join(f"--- {step} ---\n{text[-2500:]}" for step, text in logs.items())
    return f"{up.stderr[-3000:]}\n{ps}\n{shown}"


def ui_answers(stack) -> bool:
    try:
        with urllib.request.urlopen(f"{stack.ui_url('operator')}/healthz", timeout=5) as response:
            return response.status == 204
    except (urllib.error.URLError, OSError):
        return False


def kill_the_daemon_and_bring_the_stack_back(stack, engine, killed_already: bool = False) -> Callable[[], str]:
    """`docker kill` of dagster_daemon (SIGKILL: no handler runs), then the README's
    `docker-compose up -d`, until the UI answers through ui_proxy again. Returns what explains a
    later wait's failure: the stack's services and the daemon's and the proxy's last lines."""
    if not killed_already:
        container(stack, engine, "dagster_daemon").kill()
    up = stack.compose("up", "-d")
    assert up.returncode == 0, why_up_failed(stack, up)

    def explain() -> str:
        ps = stack.compose("ps").stdout
        logs = stack.compose("logs", "--tail=40", "dagster_daemon", "ui_proxy").stdout
        return f"{ps}\n{logs[-4000:]}"

    wait_for("the UI answering through ui_proxy after docker-compose up -d", lambda: ui_answers(stack), 300, explain)
    return explain


def runs_by_id(stack, group: str) -> dict[str, dict]:
    return {run["runId"]: run for run in group_runs(stack, group)}


def test_the_daemon_killed_mid_copy_and_brought_back_up_fails_the_run_retries_it_and_the_drop_ends_staged_once(
    stack, engine
):
    """docker kill of dagster_daemon (SIGKILL: no handler runs) while the stager copies, then the
    README's `docker-compose up -d`: the interrupted run is marked failed by run monitoring (its
    code server is gone), Dagster retries it, the orphaned worker container is removed with the
    verdict, and the drop ends staged exactly once."""
    group = "inbox/acme/unknown/daemon-killed/"
    files = drop_many(stack, group, "dk")
    orphan = stager_mid_copy(stack, engine, files)
    # At once: the run's own steps are in its process, which ends within a second of its last
    # worker; a run that ended before the kill would prove nothing.
    container(stack, engine, "dagster_daemon").kill()
    killed = time.monotonic()
    runs_then = group_runs(stack, group)
    interrupted = runs_then[-1]  # the oldest (newest first)
    assert interrupted["status"] == "STARTED", f"the run was not running when its daemon was killed: {runs_then}"
    explain = kill_the_daemon_and_bring_the_stack_back(stack, engine, killed_already=True)
    seconds = wait_converged(stack, group, files)
    print(f"daemon killed mid-copy, then docker-compose up -d: staged {seconds:.0f} s after the UI answered")
    runs = lambda: runs_by_id(stack, group)

    wait_for(
        "the interrupted run marked failed and a retry succeeding",
        lambda: (
            runs()[interrupted["runId"]]["status"] == "FAILURE"
            and any(run["status"] == "SUCCESS" for run in runs().values())
        ),
        300,
        lambda: f"{runs()}\n{explain()}",
    )
    print(f"daemon killed: interrupted run failed and retried within {time.monotonic() - killed:.0f} s of the kill")
    # The killed run's worker container outlived the daemon; run monitoring removed it with the verdict.
    with pytest.raises(docker.errors.NotFound):
        orphan.reload()


def test_a_recreated_webserver_is_reached_through_the_proxy_at_its_new_address(stack, engine):
    """nginx looks the webserver up again (images/ui-proxy/default.conf): without that, a webserver
    recreated by `docker-compose up -d` (new address) got 502s from a proxy holding the old one."""
    before = container(stack, engine, "dagster_webserver")
    recreated = stack.compose("up", "-d", "--force-recreate", "--no-deps", "dagster_webserver")
    assert recreated.returncode == 0, recreated.stderr[-3000:]
    after = container(stack, engine, "dagster_webserver")
    assert after.id != before.id

    def explain() -> str:
        return stack.compose("logs", "--tail=20", "ui_proxy").stdout[-3000:]

    wait_for("the recreated webserver answering through ui_proxy", lambda: ui_answers(stack), 180, explain)
    assert graphql_status(stack.ui_url("operator"), *stack.login("operator")) == 200


PAUSE_OVERRIDE = "tests/docker/compose.pause.yml"


def paused_worker(stack, engine, worker: str, timeout: float = 300):
    """The `worker` container held at its pause point (it wrote /tmp/paused in its container)."""
    deadline = time.monotonic() + timeout
    while True:
        for candidate in engine.containers.list(
            filters={"label": f"health-intake.worker={worker}", "network": PROJECT}
        ):
            try:
                candidate.get_archive("/tmp/paused")
                return candidate
            except docker.errors.NotFound:
                pass
        assert time.monotonic() < deadline, (
            f"no {worker} reached its pause point: "
            + stack.compose("logs", "--tail=60", "dagster_daemon").stdout[-3000:]
        )
        time.sleep(0.5)


@pytest.mark.parametrize("point", ["classifier.classified:1", "registrar.committed:1"])
def test_the_daemon_killed_during_a_short_step_and_brought_back_up_ends_with_the_drop_staged_once(stack, engine, point):
    """As the daemon-kill test above, with the run held at an exact place by the crash suite's pause
    hook (tests/docker/compose.pause.yml): after the classifier listed the group, after the
    registrar committed the submission. The daemon comes back without the hook (`up -d` with the
    stack's own compose file)."""
    worker = point.split(".")[0]
    with_pause = stack.compose("up", "-d", "dagster_daemon", files=(PAUSE_OVERRIDE,), env={"WORKER_PAUSE_AT": point})
    assert with_pause.returncode == 0, why_up_failed(stack, with_pause)
    group = f"inbox/acme/unknown/daemon-killed-{worker}/"
    files = drop_many(stack, group, worker, count=3, size=1000)
    held = paused_worker(stack, engine, worker)
    (interrupted,) = [run for run in group_runs(stack, group) if run["status"] == "STARTED"]
    explain = kill_the_daemon_and_bring_the_stack_back(stack, engine)
    seconds = wait_converged(stack, group, files)
    print(f"daemon killed at {point}, then docker-compose up -d: staged {seconds:.0f} s after the UI answered")
    runs = lambda: runs_by_id(stack, group)

    wait_for(
        "the interrupted run marked failed",
        lambda: runs()[interrupted["runId"]]["status"] == "FAILURE",
        300,
        lambda: f"{runs()}\n{explain()}",
    )
    # The held worker outlived the daemon; run monitoring removed it with the verdict.
    with pytest.raises(docker.errors.NotFound):
        held.reload()
