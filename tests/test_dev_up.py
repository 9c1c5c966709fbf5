"""./dev_up.sh from a fresh copy of the repository, then the README's commands, as a user runs them."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.events_services import stream_messages
from tests.helpers import DROP
from tests.services import NATS_PORT_OFFSET, REPO, DevUpProcess, fresh_copy
from workers.events import parse_document
from workers.settings import (
    DB_CONNECT_DEFAULTS,
    EVENTS_DEFAULTS,
    INTAKE_DEFAULTS,
    RECOVERY_DEFAULTS,
    RETENTION_DEFAULTS,
    load_event_settings,
)

README = (REPO / "README.md").read_text()
MATERIALIZE = "dagster asset materialize -m orchestrator.definitions --select bootstrap_heartbeat_asset"
SHOW_ROWS = "python -m workers.tables bootstrap_heartbeat"
LIST_OBJECTS = "aws s3 ls s3://health-raw/bootstrap/"
SHOW_SUBMISSIONS = "python -m workers.tables submission"
LIST_RAW = "aws s3 ls --recursive s3://health-raw/raw/acme/"
INTAKE_JOB_RUNS = """{ runsOrError(filter: {pipelineName: "register_submission_from_group_job"}) {
    ... on Runs { results { status tags { key value } } } } }"""


def readme_commands() -> list[str]:
    """Every command line of the README's bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


pytestmark = pytest.mark.slow


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


RAN: set[str] = set()


def in_dev_shell(copy: Path, command: str) -> subprocess.CompletedProcess:
    RAN.update({"source .local/dev.env", command})
    return subprocess.run(
        ["bash", "-c", f"source .local/dev.env && {command}"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def dev_up(tmp_path):
    platform = DevUpProcess(fresh_copy(tmp_path / "repo"))
    yield platform
    platform.kill_leftovers()


def test_readme_documents_the_commands_this_test_runs():
    for command in (
        "./dev_up.sh",
        "make test",
        "source .local/dev.env",
        MATERIALIZE,
        SHOW_ROWS,
        LIST_OBJECTS,
        *DROP,
        SHOW_SUBMISSIONS,
        LIST_RAW,
    ):
        assert command in README


def test_dev_env_records_every_tuning_setting_a_developer_sets():
    """dev_up.sh writes each setting the workers and the sensor read into .local/dev.env when it
    is set, so "in another shell" sees what dagster dev sees; a setting added to workers.settings
    and not to dev_up.sh's list would be lost there."""
    listed = re.search(r"^for name in (.*?); do$", (REPO / "dev_up.sh").read_text(), re.MULTILINE | re.DOTALL)
    assert listed, "dev_up.sh's loop over the tuning settings"
    recorded = set(listed.group(1).replace("\\\n", " ").split())
    written_apart = {"DISCOVERY_MODE", "NATS_URL"}  # dev_up.sh chooses these and writes them itself
    read = (
        {*INTAKE_DEFAULTS, *EVENTS_DEFAULTS, *RECOVERY_DEFAULTS, *RETENTION_DEFAULTS, *DB_CONNECT_DEFAULTS}
        - written_apart
    ) | {"SENSOR_INTERVAL_SECONDS"}
    assert recorded == read


def test_fresh_copy_comes_up_materializes_and_stops_on_ctrl_c(dev_up):
    seconds = dev_up.start(timeout=900)
    print(f"fresh ./dev_up.sh to a live UI: {seconds:.0f} s")
    assert private_modes(dev_up.copy) == (0o700, 0o600)

    done = in_dev_shell(dev_up.copy, MATERIALIZE)
    assert done.returncode == 0, why(done)

    rows = in_dev_shell(dev_up.copy, SHOW_ROWS)
    assert rows.returncode == 0 and "phase0_ok" in rows.stdout
    objects = in_dev_shell(dev_up.copy, LIST_OBJECTS)
    assert objects.returncode == 0 and "hello.txt" in objects.stdout, objects.stderr

    # The UI (the webserver's GraphQL) shows the metadata the worker reported.
    data = dev_up.graphql(
        """{ assetOrError(assetKey: {path: ["bootstrap_heartbeat_asset"]}) {
        ... on Asset { assetMaterializations(limit: 1) { metadataEntries { label } } } } }""",
    )
    (materialization,) = data["assetOrError"]["assetMaterializations"]
    labels = {entry["label"] for entry in materialization["metadataEntries"]}
    assert {"row_id", "object_key", "size_bytes", "sha256", "db_dialect", "endpoint_host"} <= labels
    # dev_up synced the layouts through Dagster, so the catalog does not call them never materialized.
    data = dev_up.graphql(
        """{ assetOrError(assetKey: {path: ["sync_layout_registry"]}) {
        ... on Asset { assetMaterializations(limit: 1) { metadataEntries { label } } } } }""",
    )
    (materialization,) = data["assetOrError"]["assetMaterializations"]
    assert {"added", "changed", "retired"} <= {entry["label"] for entry in materialization["metadataEntries"]}

    # A drop with its marker ends staged with no other action: the sensor runs by default.
    for command in DROP:
        assert in_dev_shell(dev_up.copy, command).returncode == 0
    deadline = time.monotonic() + 300
    while not any(" staged " in row for row in in_dev_shell(dev_up.copy, SHOW_SUBMISSIONS).stdout.splitlines()[2:]):
        assert time.monotonic() < deadline, (dev_up.copy / ".local/dagster.log").read_text()[-4000:]
        time.sleep(3)
    raw = in_dev_shell(dev_up.copy, LIST_RAW).stdout
    assert "medical_claims.csv" in raw and "_manifest.generated.json" in raw
    assert_the_drop_reached_the_event_stream(dev_up)
    assert_no_key_removes_the_staged_versions(dev_up)
    walk_through_by_hand(dev_up)

    # A second dev_up while the first runs is refused with a clear message.
    second = subprocess.run(
        ["./dev_up.sh"], cwd=dev_up.copy, env=dev_up.env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 1
    assert f"port {dev_up.dagster_port} is busy" in second.stderr

    assert dev_up.interrupt() != 0
    assert "dev_up: stopped" in dev_up.log.read_text()
    assert not listening(dev_up.dagster_port) and not listening(dev_up.s3_port)
    assert not listening(nats_port(dev_up)) and "bridge: stopped" in (dev_up.copy / ".local/bridge.log").read_text()

    # Re-running is safe: the venv, the DB and the bucket are reused.
    beats_before = in_dev_shell(dev_up.copy, SHOW_ROWS).stdout.count("phase0_ok")
    dev_up.start(timeout=900)
    again = in_dev_shell(dev_up.copy, MATERIALIZE)
    assert again.returncode == 0, why(again)
    assert in_dev_shell(dev_up.copy, SHOW_ROWS).stdout.count("phase0_ok") == beats_before + 1
    dev_up.interrupt()

    RAN.add("./dev_up.sh")
    untested = [c for c in readme_commands() if c not in RAN and c != "make test"]
    assert untested == [], "README commands this test does not run"


def nats_port(dev_up: DevUpProcess) -> int:
    """dev_up.sh's NATS: the port after its S3 server's internals."""
    return dev_up.s3_port + NATS_PORT_OFFSET


def assert_the_drop_reached_the_event_stream(dev_up: DevUpProcess) -> None:
    """dev_up started NATS and the bridge beside its SeaweedFS and chose events mode; the drop's
    objects are put events in the stream."""
    env = (dev_up.copy / ".local/dev.env").read_text()
    url = f"nats://127.0.0.1:{nats_port(dev_up)}"
    assert f"export NATS_URL={url}" in env and "export DISCOVERY_MODE=events" in env
    events = load_event_settings({"NATS_URL": url})
    found = {(kind, key) for m in stream_messages(events) for kind, _, key in parse_document(m.body)}
    assert {("put", command.rsplit("s3://health-raw/", 1)[1]) for command in DROP} <= found


def why(done: subprocess.CompletedProcess) -> str:
    """A failed command's reason: Dagster's "... worker failed: <reason>" lines come before a long
    traceback, so they are named first, then the output's end."""
    reasons = [line for line in done.stderr.splitlines() if "worker failed" in line or "Error:" in line]
    return "\n".join(reasons[:5]) + "\n...\n" + done.stderr[-2000:]


def private_modes(copy: Path) -> tuple[int, int]:
    return (copy / ".local").stat().st_mode & 0o777, (copy / ".local/dev.env").stat().st_mode & 0o777


def test_dev_up_makes_local_private_even_when_it_was_created_open(tmp_path):
    """Cheap: the repository's own .venv (already installed, so install.sh skips pip) and an S3
    endpoint that cannot answer, so dev_up.sh stops right after writing .local/."""
    copy = fresh_copy(tmp_path / "copy")
    (copy / ".venv").symlink_to(REPO / ".venv")
    (copy / ".local").mkdir(mode=0o755)
    (copy / ".local").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METADATA_", "MINIO_", "DAGSTER_"))}
    done = subprocess.run(
        ["./dev_up.sh"],
        cwd=copy,
        env={**env, "MINIO_ENDPOINT": "http://s3.invalid:9000", "DAGSTER_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "nothing answers at MINIO_ENDPOINT=http://s3.invalid:9000" in done.stderr, done.stderr[-2000:]
    assert private_modes(copy) == (0o700, 0o600)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_no_key_removes_the_staged_versions(dev_up: DevUpProcess) -> None:
    """The issue's "done when": once staged, the strongest key the platform holds (the dev store's
    root keys) cannot remove a raw version, with or without a governance bypass; the audit passes."""
    s3 = dev_up.s3.client()
    versions = s3.list_object_versions(Bucket="health-raw", Prefix="raw/acme/")["Versions"]
    assert {v["Key"].rsplit("/", 1)[-1] for v in versions} >= {"medical_claims.csv", "_manifest.generated.json"}
    for version in versions:
        for bypass in (False, True):
            with pytest.raises(ClientError) as refused:
                s3.delete_object(
                    Bucket="health-raw",
                    Key=version["Key"],
                    VersionId=version["VersionId"],
                    BypassGovernanceRetention=bypass,
                )
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    audit = in_dev_shell(dev_up.copy, "python -m workers.audit")
    assert audit.returncode == 0, audit.stderr[-2000:]
    report = json.loads(audit.stdout)
    assert (report["passed"], report["files_checked"] > 0) == (True, True), report


def walk_through_by_hand(dev_up: DevUpProcess) -> None:
    """The README's step-by-step commands; the launch for already-staged content registers nothing new."""
    for command in readme_commands():
        if command.startswith(("dagster", "python -m workers.")) and command not in RAN:
            done = in_dev_shell(dev_up.copy, command)
            assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
    assert "inbox/acme/unknown/drop-001/" in in_dev_shell(dev_up.copy, "python -m workers.tables inbox_object").stdout
    deadline = time.monotonic() + 180
    while True:
        runs = dev_up.graphql(INTAKE_JOB_RUNS)["runsOrError"]["results"]
        if len(runs) == 2 and all(run["status"] == "SUCCESS" for run in runs):
            break
        assert time.monotonic() < deadline, runs
        time.sleep(2)
    sensor_run = next(run for run in runs if {"key": "health-intake/submitter", "value": "acme"} in run["tags"])
    assert sensor_run["status"] == "SUCCESS"
    rows = in_dev_shell(dev_up.copy, SHOW_SUBMISSIONS).stdout.splitlines()[2:]
    assert len(rows) == 1
