"""deploy/k8s/: the chart's values, the Secrets, the run pods' Role and the migrations Job, read as
the cluster would read them and checked against what the platform declares. `helm` cannot be
installed on these machines (it is in no reachable registry, Debian's included), so `helm template`
is not run here; nor could the chart's values.schema.json be fetched whole. What is checked instead:
the values' structure and key names against the chart's schema models as read (top-level keys,
run launcher, run coordinator), and that the queue and monitoring settings are Docker mode's."""

import re
import tomllib

import yaml

from orchestrator.defs.pods import SECRET_SETTINGS
from tests.services import REPO
from workers.catalogue import WORKERS
from workers.settings import load_launch_settings

DEPLOY = REPO / "deploy/k8s"
# The top-level keys of the chart's values (its schema model, DagsterHelmValues, as read for this work).
CHART_KEYS = {
    "dagsterWebserver", "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
    "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate",
    "telemetry", "serviceAccount", "global", "retention", "additionalInstanceConfig",
}  # fmt: skip
# The chart's QueuedRunCoordinatorConfig fields (camelCase of dagster.yaml's run_coordinator config).
QUEUE_KEYS = {
    "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds", "dequeueNumWorkers", "dequeueUseThreads",
}  # fmt: skip


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def values() -> dict:
    return yaml.safe_load((DEPLOY / "values.yaml").read_text())


def docker_instance() -> dict:
    return yaml.safe_load((REPO / "images/dagster.yaml").read_text())


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def granted() -> set[tuple[str, str]]:
    """(verb, resource) pairs the run pods' Role allows."""
    (role,) = [doc for doc in documents("rbac.yaml") if doc["kind"] == "Role"]
    return {(verb, resource) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}


def k8s_settings():
    (config,) = documents("settings.yaml")
    return load_launch_settings(config["data"])


def test_the_values_use_only_the_charts_top_level_keys():
    assert set(values()) <= CHART_KEYS, set(values()) - CHART_KEYS


def test_runs_are_kubernetes_jobs_under_the_service_account_the_role_is_bound_to():
    launcher = values()["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    account = launcher["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]["serviceAccountName"]
    (binding,) = [doc for doc in documents("rbac.yaml") if doc["kind"] == "RoleBinding"]
    assert [subject["name"] for subject in binding["subjects"]] == [account]


def test_the_run_queue_and_monitoring_are_docker_modes():
    daemon, instance = values()["dagsterDaemon"], docker_instance()
    queue = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert set(queue) <= QUEUE_KEYS
    assert {snake(key): value for key, value in queue.items()} == instance["run_coordinator"]["config"]
    assert {snake(key): value for key, value in daemon["runMonitoring"].items()} == instance["run_monitoring"]
    assert {snake(key): value for key, value in daemon["runRetries"].items()} == instance["run_retries"]


def test_dagsters_storage_is_an_external_postgres():
    postgresql = values()["postgresql"]
    assert postgresql["enabled"] is False and postgresql["postgresqlHost"]
    assert "postgresqlPassword" not in postgresql  # from the Secret, never in the values
    assert "dagster-postgresql-secret" in {doc["metadata"]["name"] for doc in documents("secrets.yaml")}


def test_the_code_location_is_our_dagster_image_serving_our_definitions():
    (deployment,) = values()["dagster-user-deployments"]["deployments"]
    module = tomllib.loads((REPO / "orchestrator/pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    assert deployment["image"]["repository"].endswith("health-intake-dagster")
    assert deployment["dagsterApiGrpcArgs"] == ["-m", module]
    assert [ref["name"] for ref in deployment["envConfigMaps"]] == ["health-intake-settings"]
    assert [ref["name"] for ref in deployment["envSecrets"]] == [f"{k8s_settings().k8s_secret_prefix}-sensor"]


def test_the_settings_config_map_is_valid_kubernetes_mode_and_holds_no_key():
    settings = k8s_settings()
    (config,) = documents("settings.yaml")
    assert settings.mode == "k8s"
    assert not set(config["data"]) & set(SECRET_SETTINGS)
    assert not any("KEY" in name or "PASSWORD" in name for name in config["data"])


def test_every_role_has_a_secret_of_placeholders_with_exactly_the_keys_a_pod_references():
    settings = k8s_settings()
    secrets = {doc["metadata"]["name"]: doc for doc in documents("secrets.yaml")}
    roles = {entry.s3_role for entry in WORKERS.values()} | {entry.db_role for entry in WORKERS.values()}
    for role in roles | {"sensor"}:
        secret = secrets[f"{settings.k8s_secret_prefix}-{role}"]
        assert set(secret["stringData"]) == set(SECRET_SETTINGS), role
    for secret in secrets.values():
        assert all("REPLACE_ME" in value for value in secret["stringData"].values()), secret["metadata"]["name"]


def test_everything_is_in_the_namespace_the_launcher_starts_pods_in():
    namespace = k8s_settings().k8s_namespace
    for name in ("rbac.yaml", "secrets.yaml", "settings.yaml", "migrations-job.yaml"):
        assert {doc["metadata"]["namespace"] for doc in documents(name)} == {namespace}, name


def test_the_role_allows_pod_calls_only():
    assert granted() == {
        ("create", "pods"), ("list", "pods"), ("delete", "pods"), ("get", "pods/log"), ("list", "events"),
    }  # fmt: skip


def test_the_migrations_job_migrates_as_the_owner_then_applies_every_db_role():
    (job,) = documents("migrations-job.yaml")
    spec = job["spec"]["template"]["spec"]
    (migrate,) = spec["initContainers"]
    (db_roles,) = spec["containers"]
    assert migrate["command"] == ["alembic", "-c", "/app/alembic.ini", "upgrade", "head"]
    assert "workers.db_roles apply" in db_roles["command"][-1] and "workers.db_roles check" in db_roles["command"][-1]
    names = {item["name"] for item in db_roles["env"]}
    assert names == {"METADATA_DB_URL"} | {f"METADATA_{entry.db_role.upper()}_DB_URL" for entry in WORKERS.values()} | {
        "METADATA_SENSOR_DB_URL"
    }
    assert all("valueFrom" in item for item in migrate["env"] + db_roles["env"])
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsNonRoot"] is True
