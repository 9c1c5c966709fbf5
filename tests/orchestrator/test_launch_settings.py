"""How workers start is the deployment's to say, never a run's: the launcher has no config fields,
its settings come from the environment, and a run config that tries to set one is refused before
anything starts (in process, and through a real webserver's GraphQL launchRun)."""

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from orchestrator.defs.intake.jobs import register_submission_from_group_job
from orchestrator.defs.resources import WorkerLauncher
from tests.services import REPO, Webserver
from workers.settings import SettingsError, load_launch_settings

SEED_RUN_CONFIG = yaml.safe_load((REPO / "examples/register_drop_001.yaml").read_text())
# What a run config could once set, and what an attacker would want from each.
HOSTILE = {
    "mode": "docker",
    "image_prefix": "attacker.example/anything",
    "image_tag": "latest",
    "docker_network": "host",
    "worker_package": "os",
}
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } }
  ... on RunConfigValidationInvalid { errors { message } } ... on PythonError { message } } }"""
RUNS = "{ runsOrError { ... on Runs { results { runId } } } }"


def with_launcher_config(field: str) -> dict:
    return {**SEED_RUN_CONFIG, "resources": {"launcher": {"config": {field: HOSTILE[field]}}}}


def submissions(db_url: str) -> int:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM inbox_object")).scalar_one()
    engine.dispose()
    return count


@pytest.mark.parametrize("field", sorted(HOSTILE))
def test_a_run_config_that_sets_a_launch_setting_is_refused_before_anything_starts(platform_env, field):
    with pytest.raises(dg.DagsterInvalidConfigError, match=f'unexpected config entry "{field}"'):
        register_submission_from_group_job.execute_in_process(
            run_config=with_launcher_config(field), resources={"launcher": WorkerLauncher()}
        )
    assert submissions(platform_env.metadata_db_url) == 0


def test_the_launcher_offers_no_config_field_to_a_run():
    assert not WorkerLauncher.to_config_schema().as_field().config_type.fields


@pytest.fixture
def webserver(platform_env, tmp_path, monkeypatch):
    import os

    server = Webserver(tmp_path / "dagster_home", dict(os.environ))
    try:
        yield server.wait()
    finally:
        server.stop()


def launch_params(run_config: dict) -> dict:
    selector = {
        "repositoryLocationName": "health_intake",
        "repositoryName": "__repository__",
        "jobName": "register_submission_from_group_job",
    }
    return {"params": {"selector": selector, "runConfigData": run_config, "mode": "default"}}


@pytest.mark.dagster_runs
def test_graphql_launch_run_refuses_a_run_config_that_sets_a_launch_setting(webserver):
    for field in HOSTILE:
        answer = webserver.graphql(LAUNCH, launch_params(with_launcher_config(field)))["launchRun"]
        assert answer["__typename"] == "RunConfigValidationInvalid", answer
        assert any(field in error["message"] for error in answer["errors"]), answer
    assert webserver.graphql(RUNS)["runsOrError"]["results"] == []


@pytest.mark.dagster_runs
def test_graphql_launch_run_accepts_the_seed_run_config(webserver):
    """The control for the refusal above: the same mutation, without launcher config, starts a run."""
    answer = webserver.graphql(LAUNCH, launch_params(SEED_RUN_CONFIG))["launchRun"]
    assert answer["__typename"] == "LaunchRunSuccess", answer


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WORKER_LAUNCH_MODE", "kubernetes", "WORKER_LAUNCH_MODE must be one of"),
        ("WORKER_PACKAGE", "a b", "WORKER_PACKAGE must be a Python package name"),
        ("WORKER_IMAGE_PREFIX", "-rm", "WORKER_IMAGE_PREFIX must be part of an image reference"),
        ("WORKER_CPUS", "0", "WORKER_CPUS must be >= 0.01"),
        ("WORKER_MEMORY_MB", "12.5", "WORKER_MEMORY_MB must be an integer"),
    ],
)
def test_a_malformed_launch_setting_is_refused_naming_it(name, value, message):
    with pytest.raises(SettingsError, match=message):
        load_launch_settings({name: value})


def test_launch_settings_default_to_subprocess_mode_with_limits():
    settings = load_launch_settings({})
    assert (settings.mode, settings.cpus, settings.memory_mb) == ("subprocess", 1.0, 1024)
