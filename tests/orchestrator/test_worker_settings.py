"""Each worker gets exactly the settings workers.catalogue declares for it, and every intake setting
changed in the launching process's environment changes what the workers do (subprocess mode here;
tests/docker/test_worker_settings_in_containers.py runs the same scenario in containers)."""

import pytest

from orchestrator.defs.resources import worker_env
from tests.intake_scenarios import NON_DEFAULT_INTAKE, assert_every_setting_took_effect, run_with_non_default_settings
from workers.catalogue import CONNECTION, WORKERS, worker

LAUNCHER_ONLY = {
    "WORKER_LAUNCH_MODE": "docker",
    "DAGSTER_HOME": "/x",
    "AWS_PROFILE": "x",
    "SENSOR_INTERVAL_SECONDS": "5",
}


def test_a_worker_gets_its_declared_settings_and_nothing_else():
    env = {name: "v" for name in CONNECTION} | NON_DEFAULT_INTAKE | LAUNCHER_ONLY
    assert set(worker_env(worker("stager"), env)) == set(CONNECTION) | {"RAW_PREFIX", "STAGER_DELETE_INBOX"} | {
        "RAW_RETENTION_MODE",
        "RAW_RETENTION_DAYS",
        "RAW_LEGAL_HOLD",
    }
    for entry in WORKERS.values():
        assert not set(worker_env(entry, env)) & set(LAUNCHER_ONLY), entry.name


def test_a_worker_gets_its_roles_keys_instead_of_the_launchers():
    env = {"MINIO_ACCESS_KEY": "launcher", "MINIO_SECRET_KEY": "launcher-secret"}
    env |= {"MINIO_STAGER_ACCESS_KEY": "stager", "MINIO_STAGER_SECRET_KEY": "stager-secret"}
    assert worker_env(worker("stager"), env)["MINIO_ACCESS_KEY"] == "stager"
    assert worker_env(worker("registrar"), env)["MINIO_ACCESS_KEY"] == "launcher"


@pytest.mark.dagster_runs
def test_every_intake_setting_reaches_the_worker_processes(synced_layouts, s3_server, monkeypatch):
    assert_every_setting_took_effect(run_with_non_default_settings(monkeypatch, synced_layouts, s3_server.client()))
