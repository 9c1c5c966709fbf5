"""The launcher in docker mode: bootstrap_heartbeat_asset through a real PipesDockerClient.

Worker containers join the host's network (WORKER_DOCKER_NETWORK=host) to reach the host's Postgres
and S3 server on 127.0.0.1, as the compose stack's containers reach theirs by service name.
"""

import shutil
import uuid

import dagster as dg
import docker.errors
import pytest

from orchestrator.defs.bootstrap.assets import bootstrap_heartbeat_asset
from orchestrator.defs.dagster_internals import RUN_LABEL, remove_run_containers
from orchestrator.defs.resources import CONTAINER_LABEL, WorkerLauncher
from tests.containers import IMAGE_TAG, image_name
from tests.helpers import add_fake_workers, failure_message, reported_heartbeat
from tests.services import REPO

pytestmark = pytest.mark.usefixtures("docker_mode")


def materialize(asset=bootstrap_heartbeat_asset) -> dg.ExecuteInProcessResult:
    return dg.materialize([asset], resources={"launcher": WorkerLauncher()}, raise_on_error=False)


def worker_containers(engine) -> list:
    return engine.containers.list(all=True, filters={"label": CONTAINER_LABEL})


def test_the_heartbeat_asset_reports_the_metadata_of_its_container(images, engine, platform_env):
    result = materialize()

    assert result.success, failure_message(result)
    metadata = reported_heartbeat(result, platform_env)
    assert len(metadata["sha256"]) == 64


def test_connection_settings_reach_no_dagster_event(images, engine, platform_env, monkeypatch):
    monkeypatch.setenv("METADATA_DB_URL", "postgresql+psycopg2://intake:SENTINEL-PW@127.0.0.1:1/metadata")
    result = materialize()
    assert not result.success
    assert "SENTINEL-PW" not in "\n".join(repr(event) for event in result.all_events)


def test_the_worker_runs_in_a_container_that_is_removed_after_its_run(images, engine, platform_env):
    before = {c.id for c in worker_containers(engine)}
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [bootstrap_heartbeat_asset], resources={"launcher": WorkerLauncher()}, instance=instance
        )
        said = [entry.user_message for entry in instance.all_logs(result.run_id)]
    # A launcher that quietly ran the worker as a process would pass every other test here.
    assert [
        m for m in said if m.startswith("heartbeat worker ran in container ") and m.endswith(image_name("heartbeat"))
    ]
    assert {c.id for c in worker_containers(engine)} <= before


def test_a_worker_error_fails_the_step_with_the_workers_line(images, engine, platform_env, monkeypatch):
    monkeypatch.setenv("MINIO_ENDPOINT", "http://127.0.0.1:1")
    result = materialize()
    assert not result.success
    assert "heartbeat worker failed: object store unreachable at 127.0.0.1:1" in failure_message(result)


@pytest.fixture(scope="module")
def fake_worker_image(images, engine, tmp_path_factory) -> str:
    """The heartbeat image plus tests/fake_workers: real containers that misbehave on purpose."""
    context = tmp_path_factory.mktemp("fake-image")
    shutil.copytree(REPO / "tests/fake_workers", context / "fake_workers")
    (context / "Dockerfile").write_text(f"FROM {image_name('heartbeat')}\nCOPY fake_workers /app/fake_workers\n")
    engine.images.build(path=str(context), tag=f"health-intake-test-fakes:{IMAGE_TAG}", pull=False, rm=True)
    return "health-intake-test"


def asset_running(worker: str) -> dg.AssetsDefinition:
    @dg.asset(name=f"{worker}_asset")
    def _asset(context: dg.AssetExecutionContext, launcher: WorkerLauncher) -> dg.MaterializeResult:
        return launcher.materialize(context=context, worker=worker)

    return _asset


@pytest.fixture
def fake_workers(fake_worker_image, monkeypatch) -> None:
    monkeypatch.setenv("WORKER_PACKAGE", "fake_workers")
    monkeypatch.setenv("WORKER_IMAGE_PREFIX", fake_worker_image)
    add_fake_workers(monkeypatch, image="fakes")


def test_a_container_that_dies_fails_the_step_with_its_exit_code_and_output(fake_workers, engine, platform_env):
    result = materialize(asset_running("crashes"))
    assert not result.success
    message = failure_message(result)
    assert "crashes worker failed: container exited with code 3" in message
    assert "segfault-like death before Pipes opened" in message
    assert not [c for c in worker_containers(engine) if c.labels.get(CONTAINER_LABEL) == "crashes"]


def test_a_container_that_exits_without_reporting_fails_the_step(fake_workers, engine, platform_env):
    result = materialize(asset_running("silent"))
    assert not result.success
    assert "silent worker exited without reporting a result (container exited with code 0" in failure_message(result)


def test_a_missing_image_fails_the_step_naming_it(images, engine, platform_env, monkeypatch):
    monkeypatch.setenv("WORKER_IMAGE_PREFIX", "health-intake-absent")
    result = materialize()
    assert not result.success
    assert "heartbeat worker could not start" in failure_message(result)


def test_a_hand_off_of_ten_thousand_files_reaches_the_container_and_comes_back_whole(fake_workers, platform_env):
    """The Pipes context goes into the container as a file, not one environment variable (too long
    for one), and a report longer than a log chunk is read whole."""
    files = [{"key": f"inbox/acme/unknown/drop-9/part-{i:05d}-of-a-partner-file.csv", "size": i} for i in range(10_000)]

    @dg.op
    def hand_off(context: dg.OpExecutionContext, launcher: WorkerLauncher) -> int:
        report = launcher.run(context=context, worker="echoes", extras={"files": files})
        assert report["files"] == files
        return report["count"]

    result = (
        dg.GraphDefinition(name="hand_off", node_defs=[hand_off])
        .to_job()
        .execute_in_process(resources={"launcher": WorkerLauncher()}, raise_on_error=False)
    )
    assert result.success, [event.message for event in result.all_events if event.is_failure]
    assert result.output_for_node("hand_off") == 10_000


def run_op_with(worker: str, extras: dict | None = None) -> dg.ExecuteInProcessResult:
    @dg.op(name=f"run_{worker}")
    def run_worker(context: dg.OpExecutionContext, launcher: WorkerLauncher) -> dict:
        return launcher.run(context=context, worker=worker, extras=extras)

    job = dg.GraphDefinition(name=f"{worker}_job", node_defs=[run_worker]).to_job()
    return job.execute_in_process(resources={"launcher": WorkerLauncher()}, raise_on_error=False)


def test_worker_containers_run_under_the_configured_memory_and_cpu_limits(fake_workers, platform_env, monkeypatch):
    monkeypatch.setenv("WORKER_MEMORY_MB", "300")
    monkeypatch.setenv("WORKER_CPUS", "0.5")

    result = run_op_with("limits")

    assert result.success, [event.message for event in result.all_events if event.is_failure]
    report = result.output_for_node("run_limits")
    assert report["memory"] == str(300 * 1024 * 1024)
    if report["cpu_period"]:  # cgroup v1: quota and period in two files
        assert int(report["cpu"]) / int(report["cpu_period"]) == 0.5
    else:  # cgroup v2: "quota period"
        quota, period = report["cpu"].split()
        assert int(quota) / int(period) == 0.5


def test_the_worker_containers_of_a_run_found_dead_are_removed_and_no_others(images, engine, monkeypatch):
    """What run monitoring does with a lost run's workers (MonitoredRunLauncher.lost): the engine
    keeps a worker running after the process that launched it died."""
    monkeypatch.setenv("WORKER_LAUNCH_MODE", "docker")
    lost, other = (f"test-run-{uuid.uuid4().hex[:8]}" for _ in range(2))
    started = [
        engine.containers.run(
            image_name("heartbeat"), entrypoint=["sleep", "300"], labels={RUN_LABEL: run}, detach=True
        )
        for run in (lost, lost, other)
    ]
    try:
        removal = remove_run_containers(lost)
        assert sorted(removal.removed) == sorted(c.short_id for c in started[:2])
        assert removal.left == () and removal.problem == ""
        assert removal.note() == f"; removed its worker container(s) {', '.join(removal.removed)}"
        for gone in started[:2]:
            with pytest.raises(docker.errors.NotFound):
                gone.reload()
        started[2].reload()
        assert started[2].status == "running"
    finally:
        for container in started:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass


def test_a_lost_runs_verdict_says_when_the_engine_did_not_answer(monkeypatch, tmp_path):
    """A socket nobody listens on (a real refused connection): the verdict says the containers were
    not looked for, rather than failing the health check."""
    monkeypatch.setenv("WORKER_LAUNCH_MODE", "docker")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    removal = remove_run_containers("test-run-nowhere")
    assert removal.removed == () and removal.left == ()
    assert removal.note().startswith("; its worker containers were not looked for: the engine refused or did not")
