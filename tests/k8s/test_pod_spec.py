"""The pod each worker gets in Kubernetes mode, built by dagster-k8s's own build_pod_body from our
spec, checked against the worker's catalogue entry; and the three launch modes derived from the one
declaration (resources.worker_start), so they cannot drift apart."""

from types import SimpleNamespace

import pytest
from dagster_k8s.pipes import build_pod_body

from orchestrator.defs import pods
from orchestrator.defs.dagster_internals import WORKER_UID
from orchestrator.defs.resources import container_kwargs, plain_command, worker_start
from tests.services import REPO
from workers.catalogue import WORKERS, Worker
from workers.settings import load_launch_settings

# What the orchestrator holds in each mode's environment (the keys are the Secrets' business in k8s).
ENV = {name: f"value-of-{name}" for entry in WORKERS.values() for name in entry.settings} | {
    "WORKER_CPUS": "0.5",
    "WORKER_MEMORY_MB": "768",
    "K8S_SECRET_PREFIX": "intake-role",
}


def pod_for(entry: Worker):
    settings = load_launch_settings({**ENV, "WORKER_LAUNCH_MODE": "k8s"})
    start = worker_start(entry, settings, ENV)
    return build_pod_body(
        pod_name="p",
        image=start.image,
        command=list(start.pipes_command),
        env_vars={"DAGSTER_PIPES_CONTEXT": "c", "DAGSTER_PIPES_MESSAGES": "m", **pods.plain_env(start)},
        base_pod_meta={"labels": pods.pod_labels(start, "run-1", "launch-1")},
        base_pod_spec=pods.pod_spec(start, settings),
    )


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_the_pod_runs_the_workers_image_and_module_with_pipes(name):
    entry = WORKERS[name]
    (container,) = pod_for(entry).spec.containers
    assert container.image == f"health-intake-{entry.image}:latest"
    assert container.command == ["python", "-m", entry.module, "--pipes"]


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_the_pod_gets_exactly_the_declared_settings_with_the_roles_keys_from_its_secrets(name):
    entry = WORKERS[name]
    (container,) = pod_for(entry).spec.containers
    plain = {item.name: item.value for item in container.env if item.value_from is None}
    refs = {item.name: item.value_from.secret_key_ref for item in container.env if item.value_from is not None}
    assert set(plain) | set(refs) == set(entry.settings) | {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"}
    assert set(refs) == {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "METADATA_DB_URL"}
    assert not set(refs) & set(plain), "a role key as a plain value"
    assert {(ref.name, ref.key) for name, ref in refs.items() if name.startswith("MINIO_")} == {
        (f"intake-role-{entry.s3_role}", "MINIO_ACCESS_KEY"),
        (f"intake-role-{entry.s3_role}", "MINIO_SECRET_KEY"),
    }
    url = refs["METADATA_DB_URL"]
    assert (url.name, url.key) == (f"intake-role-{entry.db_role}", "METADATA_DB_URL")


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_the_pod_runs_non_root_read_only_unprivileged_within_its_limits(name):
    pod = pod_for(WORKERS[name])
    (container,) = pod.spec.containers
    assert pod.spec.security_context.run_as_non_root is True
    assert pod.spec.security_context.run_as_user == WORKER_UID
    assert pod.spec.automount_service_account_token is False
    assert pod.spec.restart_policy == "Never"
    context = container.security_context
    assert (context.allow_privilege_escalation, context.read_only_root_filesystem) == (False, True)
    assert context.capabilities.drop == ["ALL"]
    assert [mount.mount_path for mount in container.volume_mounts] == ["/tmp"]
    assert container.resources.requests == container.resources.limits == {"cpu": "500m", "memory": "768Mi"}


def test_the_pod_is_labelled_with_its_worker_run_and_launch():
    labels = pod_for(WORKERS["stager"]).metadata.labels
    assert labels[pods.WORKER_LABEL] == "stager"
    assert labels[pods.RUN_LABEL] == "run-1"
    assert labels[pods.LAUNCH_LABEL] == "launch-1"


def test_the_worker_uid_is_the_images_user():
    assert f"--uid {WORKER_UID}" in (REPO / "images/worker.Dockerfile").read_text()


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_the_three_modes_run_the_same_module_with_the_same_settings(name):
    entry = WORKERS[name]
    start = {mode: worker_start(entry, load_launch_settings({"WORKER_LAUNCH_MODE": mode}), ENV) for mode in
             ("subprocess", "docker", "k8s")}  # fmt: skip
    assert len({(s.image, s.command, tuple(sorted(s.env.items()))) for s in start.values()}) == 1
    context = SimpleNamespace(run=SimpleNamespace(run_id="run-1"))
    docker = container_kwargs(context, start["docker"], load_launch_settings({}))
    (container,) = pod_for(entry).spec.containers
    assert [*docker["entrypoint"], "--pipes"] == container.command
    assert plain_command(start["subprocess"])[1:] == container.command[1:]
    env_names = {item.name for item in container.env} - {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"}
    assert env_names == set(start["docker"].env) == set(entry.settings)
