"""The Kubernetes launch mode end to end through the real PipesK8sClient and kubernetes client,
against tests/k8s/fake_api.py: a fake API server and kubelet in the test (its docstring says what it
stands in for and what not), which runs the pod's command as a real worker process against this
test's database and S3 server and serves that process's output as the pod's log, so the worker's
Pipes messages reach Dagster the way they would from a cluster."""

import dagster as dg
import pytest

from orchestrator.defs.bootstrap.assets import bootstrap_heartbeat_asset
from orchestrator.defs.resources import WorkerLauncher
from tests.helpers import add_fake_workers, failure_message, reported_heartbeat
from tests.k8s.fake_api import FakeKubernetes
from workers.catalogue import WORKERS

NAMESPACE = "intake-test"
PREFIX = "test-role"


@pytest.fixture
def cluster(platform_env, monkeypatch, tmp_path):
    """The fake cluster, holding one Secret per role with this test's keys (dev mode's one pair),
    and the launcher pointed at it in k8s mode."""
    roles = {entry.s3_role for entry in WORKERS.values()} | {entry.db_role for entry in WORKERS.values()}
    keys = {
        "MINIO_ACCESS_KEY": platform_env.s3_access_key,
        "MINIO_SECRET_KEY": platform_env.s3_secret_key,
        "METADATA_DB_URL": platform_env.metadata_db_url,
    }
    with FakeKubernetes({f"{PREFIX}-{role}": keys for role in roles}) as fake:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
        for name, value in {
            "WORKER_LAUNCH_MODE": "k8s",
            "K8S_KUBECONFIG": str(kubeconfig),
            "K8S_NAMESPACE": NAMESPACE,
            "K8S_SECRET_PREFIX": PREFIX,
            "K8S_POLL_SECONDS": "0.2",
        }.items():
            monkeypatch.setenv(name, value)
        # The orchestrator's own keys must not reach a pod: the Secrets are the pods' only source.
        for name in keys:
            monkeypatch.setenv(name, f"ORCHESTRATOR-{name}")
        yield fake


def materialize(asset: dg.AssetsDefinition = bootstrap_heartbeat_asset) -> dg.ExecuteInProcessResult:
    return dg.materialize([asset], resources={"launcher": WorkerLauncher()}, raise_on_error=False)


def fake_worker_asset(monkeypatch, worker: str) -> dg.AssetsDefinition:
    """An asset running one of tests/fake_workers (the fake kubelet runs commands from the repository)."""
    monkeypatch.setenv("WORKER_PACKAGE", "tests.fake_workers")
    add_fake_workers(monkeypatch)

    @dg.asset(name=f"{worker}_asset")
    def _asset(context: dg.AssetExecutionContext, launcher: WorkerLauncher) -> dg.MaterializeResult:
        return launcher.materialize(context=context, worker=worker)

    return _asset


@pytest.mark.dagster_runs
def test_the_heartbeat_runs_as_a_pod_and_its_metadata_arrives_through_the_pod_log(platform_env, cluster):
    result = materialize()

    assert result.success, failure_message(result)
    metadata = reported_heartbeat(result, platform_env)
    assert len(metadata["sha256"]) == 64
    (pod,) = cluster.created
    assert pod["metadata"]["labels"]["health-intake/worker"] == "heartbeat"
    assert pod["metadata"]["labels"]["health-intake/run-id"] == result.run_id
    assert pod["spec"]["containers"][0]["command"] == ["python", "-m", "workers.heartbeat", "--pipes"]
    assert "ORCHESTRATOR-" not in str(pod), "an orchestrator key travelled in the pod spec"


@pytest.mark.dagster_runs
def test_the_pod_is_removed_after_the_step(platform_env, cluster):
    assert materialize().success
    assert cluster.pods == {}
    assert ("delete", "pods") in cluster.calls


@pytest.mark.dagster_runs
def test_a_pod_that_fails_fails_the_step_with_its_exit_code_reason_and_last_lines(platform_env, cluster, monkeypatch):
    result = materialize(fake_worker_asset(monkeypatch, "crashes"))

    assert not result.success
    message = failure_message(result)
    assert "crashes worker failed: pod exited with code 3 (Error, phase Failed)" in message
    assert "crashes: segfault-like death before Pipes opened" in message
    assert cluster.pods == {}


@pytest.mark.dagster_runs
def test_a_pod_that_never_reports_fails_the_step_with_its_last_lines(platform_env, cluster, monkeypatch):
    result = materialize(fake_worker_asset(monkeypatch, "silent"))

    assert not result.success
    message = failure_message(result)
    assert "silent worker exited without reporting a result (pod exited with code 0; output tail:" in message


@pytest.mark.dagster_runs
def test_the_client_makes_only_the_calls_the_role_grants(platform_env, cluster, monkeypatch):
    from tests.k8s.test_deploy import granted

    assert materialize().success
    assert not materialize(fake_worker_asset(monkeypatch, "crashes")).success
    assert set(cluster.calls) <= granted(), set(cluster.calls) - granted()


@pytest.mark.dagster_runs
def test_a_pod_the_restricted_pod_security_standard_refuses_fails_the_step_naming_why(
    platform_env, cluster, monkeypatch
):
    from orchestrator.defs import pods

    restricted = pods.pod_spec

    def privileged(start, settings):
        spec = restricted(start, settings)
        del spec["containers"][0]["securityContext"]["capabilities"]
        return spec

    monkeypatch.setattr(pods, "pod_spec", privileged)
    result = materialize()

    assert not result.success
    message = failure_message(result)
    assert "heartbeat worker could not start: the Kubernetes API answered 403" in message
    assert "unrestricted capabilities" in message


@pytest.mark.dagster_runs
def test_the_intake_job_registers_and_stages_a_group_through_three_worker_pods(synced_layouts, cluster, s3_server):
    from orchestrator.defs.intake.jobs import register_submission_from_group_job
    from tests.helpers import drop_files

    group = "inbox/acme/unknown/drop-k8s/"
    drop_files(s3_server.client(), synced_layouts.bucket, group, {"medical_claims.csv": b"member,amount\n1,2\n"})
    config = {"grouping_key": group, "grouping_method": "MARKER_FILE"}
    result = register_submission_from_group_job.execute_in_process(
        run_config={"ops": {"register_submission_from_group": {"config": config}}},
        resources={"launcher": WorkerLauncher()},
        raise_on_error=False,
    )

    assert result.success, failure_message(result)
    workers = [pod["metadata"]["labels"]["health-intake/worker"] for pod in cluster.created]
    assert workers == ["classifier", "registrar", "stager"]
    staged = s3_server.client().list_objects_v2(Bucket=synced_layouts.bucket, Prefix="raw/")
    assert any(item["Key"].endswith("medical_claims.csv") for item in staged.get("Contents", []))
    assert cluster.pods == {}


@pytest.mark.dagster_runs
def test_a_context_too_large_for_a_pods_environment_fails_the_step_before_any_pod(platform_env, cluster):
    files = [{"key": f"inbox/acme/unknown/big/part-{i:05d}-{i * 7919 % 100003}.csv", "size": i} for i in range(12_000)]

    @dg.asset(name="heartbeat_with_a_large_group")
    def _asset(context: dg.AssetExecutionContext, launcher: WorkerLauncher) -> dg.MaterializeResult:
        return launcher.materialize(context=context, worker="heartbeat", extras={"files": files})

    result = materialize(_asset)

    assert not result.success
    assert "over the 131072 a pod's environment variable may hold" in failure_message(result)
    assert cluster.created == []


@pytest.mark.dagster_runs
def test_no_kubernetes_configuration_fails_the_step_saying_so(platform_env, cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("K8S_KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    result = materialize()

    assert not result.success
    assert "heartbeat worker could not start: no Kubernetes configuration" in failure_message(result)
    assert cluster.calls == []


@pytest.mark.dagster_runs
def test_an_api_server_that_does_not_answer_fails_the_step_saying_so(platform_env, cluster, monkeypatch, tmp_path):
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig-closed", NAMESPACE)
    kubeconfig.write_text(kubeconfig.read_text().replace(cluster.url, "http://127.0.0.1:1"))
    monkeypatch.setenv("K8S_KUBECONFIG", str(kubeconfig))
    result = materialize()

    assert not result.success
    assert "heartbeat worker could not start: the Kubernetes API did not answer" in failure_message(result)
