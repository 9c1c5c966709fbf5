"""bootstrap_heartbeat_asset through a real PipesSubprocessClient and real worker processes."""

import dagster as dg
import pytest

from orchestrator.definitions import defs
from orchestrator.defs.bootstrap.assets import bootstrap_heartbeat_asset
from orchestrator.defs.resources import WorkerLauncher
from tests.helpers import add_fake_workers, failure_message, reported_heartbeat
from tests.services import REPO


def materialize(launcher: WorkerLauncher | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [bootstrap_heartbeat_asset],
        resources={"launcher": launcher or WorkerLauncher()},
        raise_on_error=False,
    )


def test_definitions_load_with_the_heartbeat_asset():
    dg.Definitions.validate_loadable(defs)
    assert dg.AssetKey("bootstrap_heartbeat_asset") in defs.resolve_asset_graph().get_all_asset_keys()


@pytest.mark.dagster_runs
def test_asset_reports_the_workers_metadata(platform_env):
    result = materialize()

    assert result.success
    metadata = reported_heartbeat(result, platform_env)
    head = dg_s3_head(platform_env, metadata["object_key"])
    assert metadata["size_bytes"] == head["ContentLength"]
    assert len(metadata["sha256"]) == 64


def dg_s3_head(settings, key: str) -> dict:
    from workers.store import make_s3_client

    return make_s3_client(settings).head_object(Bucket=settings.bucket, Key=key)


@pytest.mark.dagster_runs
def test_asset_fails_with_the_workers_message_when_the_database_is_unreachable(platform_env, monkeypatch):
    monkeypatch.setenv("METADATA_DB_URL", "postgresql+psycopg2://intake:SENTINEL-PW@127.0.0.1:1/metadata")
    result = materialize()

    assert not result.success
    message = failure_message(result)
    assert "heartbeat worker failed: metadata database error (postgresql at 127.0.0.1:1/metadata)" in message
    assert "SENTINEL-PW" not in message


@pytest.mark.dagster_runs
def test_asset_fails_with_the_workers_message_when_the_object_store_is_unreachable(platform_env, monkeypatch):
    monkeypatch.setenv("MINIO_ENDPOINT", "http://127.0.0.1:1")
    result = materialize()

    assert not result.success
    assert "heartbeat worker failed: object store unreachable at 127.0.0.1:1" in failure_message(result)


@pytest.fixture
def fake_workers_on_path(monkeypatch):
    """tests/fake_workers as the worker package, its workers in the catalogue (a Python-level seam,
    as a deployment's own workers would be: nothing a run config can reach)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))
    monkeypatch.setenv("WORKER_PACKAGE", "fake_workers")
    add_fake_workers(monkeypatch)
    return WorkerLauncher()


@pytest.mark.dagster_runs
def test_asset_fails_when_the_worker_exits_without_reporting(platform_env, fake_workers_on_path):
    launcher = fake_workers_on_path
    result = dg.materialize([_asset_running("silent")], resources={"launcher": launcher}, raise_on_error=False)
    assert not result.success
    assert "silent worker exited without reporting a result" in failure_message(result)


@pytest.mark.dagster_runs
def test_asset_fails_with_the_exit_code_when_the_worker_dies_before_pipes(platform_env, fake_workers_on_path):
    result = dg.materialize(
        [_asset_running("crashes")], resources={"launcher": fake_workers_on_path}, raise_on_error=False
    )
    assert not result.success
    assert "crashes worker failed: External execution process failed with code 3" in failure_message(result)


def test_an_unknown_launch_mode_is_refused(platform_env, monkeypatch):
    monkeypatch.setenv("WORKER_LAUNCH_MODE", "kubernetes")
    result = materialize()
    assert not result.success
    assert "WORKER_LAUNCH_MODE must be one of" in failure_message(result)


def _asset_running(worker: str) -> dg.AssetsDefinition:
    @dg.asset(name=f"{worker}_asset")
    def _asset(context: dg.AssetExecutionContext, launcher: WorkerLauncher) -> dg.MaterializeResult:
        return launcher.materialize(context=context, worker=worker)

    return _asset
