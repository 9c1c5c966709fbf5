"""Kubernetes mode (WORKER_LAUNCH_MODE=k8s): each worker a pod, started through dagster-k8s's PipesK8sClient.

The pod runs the worker's own image and command with the settings the other modes give it
(resources.worker_start); what differs is where the role's keys come from: the object-store keys and
the metadata-DB URL are references into the role's Secret (K8S_SECRET_PREFIX-<role>), resolved by the
kubelet, so no key is in the pod spec, the orchestrator's environment or the event log. Checked
against dagster-k8s 0.29.27: the calls it makes are the ones deploy/k8s/rbac.yaml grants.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import dagster as dg
import kubernetes
import urllib3.exceptions
from dagster_k8s import PipesK8sClient
from dagster_k8s.client import DagsterK8sError
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, DagsterPipesError, encode_env_var

from orchestrator.defs.dagster_internals import OUTPUT_TAIL_LINES, WORKER_UID, Context, worker_error, worker_lines
from workers.catalogue import Worker
from workers.settings import LaunchSettings

if TYPE_CHECKING:
    from orchestrator.defs.resources import WorkerStart

# The worker's settings that are a role's keys: never a plain value in a pod spec.
SECRET_SETTINGS = ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "METADATA_DB_URL")
WORKER_LABEL = "health-intake/worker"
RUN_LABEL = "health-intake/run-id"
LAUNCH_LABEL = "health-intake/launch"  # one per launch: a step's retry gets a pod of its own
CONTAINER = "worker"
PIPES_LINE = '{"__dagster_pipes_version"'
# Linux refuses to exec a process with one environment string longer than this (MAX_ARG_STRLEN),
# name, "=" and NUL included; the runtime starting the container fails with "argument list too long".
LONGEST_ENV_STRING = 131072


class EnvContextWithinLimit(dg.PipesEnvContextInjector):
    """dagster-k8s's default injector (the context in the pod's DAGSTER_PIPES_CONTEXT), refusing
    before any pod is created a context that no container could be started with: a group of some
    3,500 files (docs/scale-out.md), where the pod would otherwise fail to start with a runtime error."""

    @contextmanager
    def inject_context(self, context_data) -> Iterator[Mapping[str, Any]]:
        with super().inject_context(context_data) as params:
            size = len(DAGSTER_PIPES_CONTEXT_ENV_VAR) + len(encode_env_var(params)) + 2
            if size > LONGEST_ENV_STRING:
                raise dg.Failure(
                    description=f"the Pipes context is {size} bytes, over the {LONGEST_ENV_STRING} a pod's environment "
                    "variable may hold: too large a group for Kubernetes mode (docs/scale-out.md, Large groups)"
                )
            yield params


def secret_name(role: str, settings: LaunchSettings) -> str:
    return f"{settings.k8s_secret_prefix}-{role}"


def secret_env(entry: Worker, settings: LaunchSettings) -> list[dict[str, Any]]:
    """The role's keys as references into its Secret: the object-store role's keys, the DB role's URL."""
    role_of = {"MINIO_ACCESS_KEY": entry.s3_role, "MINIO_SECRET_KEY": entry.s3_role, "METADATA_DB_URL": entry.db_role}
    return [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name(role_of[name], settings), "key": name}}}
        for name in SECRET_SETTINGS
    ]


def plain_env(start: WorkerStart) -> dict[str, str]:
    """The declared settings the orchestrator holds, less the role's keys (a Secret's business here)."""
    return {name: value for name, value in start.env.items() if name not in SECRET_SETTINGS}


def pod_labels(start: WorkerStart, run_id: str, launch_id: str) -> dict[str, str]:
    return {WORKER_LABEL: start.name, RUN_LABEL: run_id, LAUNCH_LABEL: launch_id}


def pod_spec(start: WorkerStart, settings: LaunchSettings) -> dict[str, Any]:
    """The pod spec PipesK8sClient completes with the image, the command and the plain settings."""
    cpu, memory = f"{round(settings.cpus * 1000)}m", f"{settings.memory_mb}Mi"
    return {
        "restartPolicy": "Never",
        # A worker talks to the DB and the object store, never to the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # The root filesystem is read-only; /tmp is the one place a worker (or a library) may write.
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
        "containers": [
            {
                "name": CONTAINER,
                "env": secret_env(start.entry, settings),
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                # Requests equal to limits, as Docker mode's hard limits: over its memory, a worker is killed.
                "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}},
            }
        ],
    }


def launch_pod(
    context: Context, start: WorkerStart, extras: Mapping[str, Any], settings: LaunchSettings
) -> tuple[dg.PipesClientCompletedInvocation, str]:
    pod = WorkerPod(settings.k8s_namespace, uuid.uuid4().hex)
    client = PipesK8sClient(
        context_injector=EnvContextWithinLimit(),
        kubeconfig_file=settings.k8s_kubeconfig or None,
        poll_interval=settings.k8s_poll_seconds,
    )
    try:
        invocation = client.run(
            context=context,
            extras=dict(extras),
            image=start.image,
            command=list(start.pipes_command),
            namespace=settings.k8s_namespace,
            env=plain_env(start),
            base_pod_meta={"labels": pod_labels(start, context.run.run_id, pod.launch_id)},
            base_pod_spec=pod_spec(start, settings),
            pod_wait_timeout=settings.k8s_pod_timeout_seconds,
            delete_pod_on_completion=False,  # removed below, once its outcome and last lines are read
        )
        return invocation, f" (pod exited with code 0; output tail: {pod.output_tail()})"
    except (DagsterK8sError, DagsterPipesError) as exc:
        reason = worker_error(context) or f"{pod.outcome(exc)}: {pod.output_tail()}"
        raise dg.Failure(description=f"{start.name} worker failed: {reason}") from None
    except (kubernetes.client.ApiException, kubernetes.config.ConfigException, urllib3.exceptions.HTTPError) as exc:
        raise dg.Failure(description=f"{start.name} worker could not start: {api_problem(exc)}") from None
    finally:
        removed = pod.remove()
        if removed:
            context.log.info(f"{start.name} worker ran in pod {', '.join(removed)} of {start.image} (removed)")


class WorkerPod:
    """The pod of one launch, found by its launch label (PipesK8sClient names it; we do not)."""

    def __init__(self, namespace: str, launch_id: str):
        self.namespace, self.launch_id = namespace, launch_id
        self.names: list[str] = []

    def api(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api()  # the configuration PipesK8sClient loaded

    def find(self) -> list[Any]:
        selector = f"{LAUNCH_LABEL}={self.launch_id}"
        try:
            pods = self.api().list_namespaced_pod(self.namespace, label_selector=selector).items
        except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError):
            return []
        self.names = [pod.metadata.name for pod in pods]
        return pods

    def outcome(self, exc: Exception) -> str:
        """How the pod ended: its worker container's exit code and reason, or why it never ran."""
        for pod in self.find():
            for status in pod.status.container_statuses or []:
                if status.state.terminated is not None:
                    ended = status.state.terminated
                    why = f"{ended.reason}: {ended.message}" if ended.message else ended.reason
                    return f"pod exited with code {ended.exit_code} ({why}, phase {pod.status.phase})"
                if status.state.waiting is not None:
                    return f"pod never ran ({status.state.waiting.reason}: {status.state.waiting.message})"
        return f"pod failed: {str(exc).splitlines()[0][:300]}"

    def output_tail(self) -> str:
        """The worker's last lines (its Pipes messages left out), or a note when none can be read."""
        texts = []
        for name in self.names or [pod.metadata.name for pod in self.find()]:
            try:
                response = self.api().read_namespaced_pod_log(
                    name, self.namespace, container=CONTAINER, tail_lines=200, _preload_content=False
                )
                texts.append(response.data.decode(errors="replace"))
            except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError):
                continue
        lines = [line for line in worker_lines("\n".join(texts)) if not line.startswith(PIPES_LINE)]
        return " | ".join(lines[-OUTPUT_TAIL_LINES:]) or "(no output)"

    def remove(self) -> list[str]:
        """Delete the launch's pods; the names of those the API server took the deletion of."""
        removed = []
        for name in self.names or [pod.metadata.name for pod in self.find()]:
            try:
                self.api().delete_namespaced_pod(name, self.namespace)
                removed.append(name)
            except kubernetes.client.ApiException as exc:
                if exc.status == 404:
                    continue
                raise dg.Failure(description=f"worker pod {name} could not be removed: {api_problem(exc)}") from None
            except urllib3.exceptions.HTTPError as exc:
                raise dg.Failure(description=f"worker pod {name} could not be removed: {api_problem(exc)}") from None
        return removed


def api_problem(exc: Exception) -> str:
    """One line on why the Kubernetes API could not be used."""
    if isinstance(exc, kubernetes.client.ApiException):
        try:
            message = json.loads(exc.body or "{}").get("message") or exc.reason
        except ValueError:
            message = exc.reason
        return f"the Kubernetes API answered {exc.status}: {message}"
    if isinstance(exc, kubernetes.config.ConfigException):
        return f"no Kubernetes configuration (in-cluster, or K8S_KUBECONFIG): {exc}"
    return f"the Kubernetes API did not answer: {exc}"
