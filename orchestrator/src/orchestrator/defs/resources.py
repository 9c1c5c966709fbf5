"""The worker launcher: the one place that knows whether a worker runs as a process, a container or a pod.

Nothing about how a worker starts can be set from run config: the launcher has no config fields,
so a run config that names one is refused by Dagster before the run starts. Launch settings come
from the deployment's environment (workers.settings.LaunchSettings); what each worker is and which
settings it reads, from workers.catalogue.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg
import docker.errors
from dagster_pipes import DagsterPipesError

from orchestrator.defs.dagster_internals import (
    RUN_LABEL,
    ContainerClient,
    WorkerProcessFailed,
    run_subprocess,
    worker_error,
)
from workers.catalogue import Worker, worker
from workers.db_roles import db_url_for
from workers.roles import role_credentials
from workers.runtime import RESULT_MARKER
from workers.settings import LaunchSettings, SettingsError, load_launch_settings

# What a Python process needs to start and find its packages and CA bundle; none is a secret.
PROCESS_BASICS = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "AWS_CA_BUNDLE",
)
CONTAINER_LABEL = "health-intake.worker"

Context = dg.AssetExecutionContext | dg.OpExecutionContext


class WorkerLauncher(dg.ConfigurableResource):
    """Launches `python -m <WORKER_PACKAGE>.<name> --pipes` through Dagster Pipes, as a process
    (WORKER_LAUNCH_MODE=subprocess, dev), in the worker's image (docker) or as a pod of that
    image (k8s)."""

    def materialize(
        self, *, context: dg.AssetExecutionContext, worker: str, extras: Mapping[str, Any] | None = None
    ) -> dg.MaterializeResult:
        """Run the worker for an asset; fail unless it reported its materialization."""
        invocation, exit_note = launch(context, worker, extras or {})
        for result in invocation.get_results(implicit_materializations=False):
            if isinstance(result, dg.MaterializeResult) and RESULT_MARKER in (result.metadata or {}):
                return result
        raise dg.Failure(description=f"{worker} worker exited without reporting a result{exit_note}")

    def run(
        self, *, context: dg.OpExecutionContext, worker: str, extras: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run the worker for an op; return the result it reported, or fail."""
        invocation, exit_note = launch(context, worker, extras or {})
        for message in invocation.get_custom_messages():
            if isinstance(message, dict) and message.get(RESULT_MARKER) == worker:
                return message
        raise dg.Failure(description=f"{worker} worker exited without reporting a result{exit_note}")


@dataclass(frozen=True)
class WorkerStart:
    """What every launch mode starts for a worker, derived from its catalogue entry alone: the
    process (subprocess), the container (docker) and the pod (k8s) differ only in how they run it."""

    entry: Worker
    image: str
    command: tuple[str, ...]  # `python -m <package>.<name>`; PIPES_FLAG follows in every mode
    env: Mapping[str, str]  # the declared settings the launching process holds

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def pipes_command(self) -> tuple[str, ...]:
        return (*self.command, PIPES_FLAG)


PIPES_FLAG = "--pipes"


def worker_start(entry: Worker, settings: LaunchSettings, env: Mapping[str, str] = os.environ) -> WorkerStart:
    # The command is named here, not taken from the image, so a worker without an image of its
    # own (layouts, audit) runs its own module.
    return WorkerStart(
        entry=entry,
        image=settings.image_for(entry.image),
        command=("python", "-m", f"{settings.worker_package}.{entry.name}"),
        env=worker_env(entry, env),
    )


def launch(context: Context, name: str, extras: Mapping[str, Any]) -> tuple[dg.PipesClientCompletedInvocation, str]:
    """Run the worker to completion; return its invocation and a note on how it exited."""
    try:
        settings = load_launch_settings()
        start = worker_start(worker(name), settings)
    except (SettingsError, LookupError) as exc:
        raise dg.Failure(description=f"{name} worker not started: {exc}") from None
    if settings.mode == "docker":
        return launch_container(context, start, extras, settings)
    if settings.mode == "k8s":
        # dagster-k8s and the kubernetes client take about 0.9 s to import: only k8s mode pays it,
        # not every run and step process of the other two.
        from orchestrator.defs.pods import launch_pod

        return launch_pod(context, start, extras, settings)
    try:
        return run_subprocess(context, plain_command(start), {**process_basics(), **start.env}, extras), ""
    except WorkerProcessFailed as exc:
        reason = worker_error(context) or str(exc)
        raise dg.Failure(description=f"{name} worker failed: {reason}") from None


def plain_command(start: WorkerStart) -> list[str]:
    """Dev mode's command: the worker's, run by this process's Python (not PATH's)."""
    return [sys.executable, *start.pipes_command[1:]]


def launch_container(
    context: Context, start: WorkerStart, extras: Mapping[str, Any], settings: LaunchSettings
) -> tuple[dg.PipesClientCompletedInvocation, str]:
    client = ContainerClient()
    try:
        invocation = client.run(
            context=context,
            image=start.image,
            command=[PIPES_FLAG],
            extras=dict(extras),
            env=dict(start.env),
            container_kwargs=container_kwargs(context, start, settings),
        )
        return invocation, f" (container exited with code 0; output tail: {client.output_tail()})"
    except DagsterPipesError:
        reason = worker_error(context) or f"container exited with code {client.exit_code()}: {client.output_tail()}"
        raise dg.Failure(description=f"{start.name} worker failed: {reason}") from None
    except docker.errors.DockerException as exc:
        raise dg.Failure(description=f"{start.name} worker could not start: {docker_problem(exc)}") from None
    finally:
        if client.container is not None:
            context.log.info(f"{start.name} worker ran in container {client.container.short_id} of {start.image}")
        client.remove_container()


def container_kwargs(context: Context, start: WorkerStart, settings: LaunchSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "entrypoint": list(start.command),
        "labels": {CONTAINER_LABEL: start.name, RUN_LABEL: context.run.run_id},
        "nano_cpus": int(settings.cpus * 1e9),
        "mem_limit": f"{settings.memory_mb}m",
        # Without swap the memory limit is the limit: a worker over it is killed, not slowed.
        "memswap_limit": f"{settings.memory_mb}m",
    }
    if settings.docker_network:
        kwargs["network"] = settings.docker_network
    return kwargs


def docker_problem(exc: Exception) -> str:
    """One line on why no container could be run."""
    if isinstance(exc, docker.errors.ImageNotFound):
        return f"image not found ({exc.explanation}); build the images: make images"
    if isinstance(exc, docker.errors.APIError):
        return f"the container engine refused: {exc.explanation}"
    return f"no container engine answers at DOCKER_HOST={os.environ.get('DOCKER_HOST', '(unset)')}: {exc}"


def worker_env(entry: Worker, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The settings the worker declares, from `env`, with its roles' object-store keys and metadata-DB
    URL where they are set. Where they are not (dev mode), the worker gets the launching process's."""
    values = {name: env[name] for name in entry.settings if name in env}
    keys = role_credentials(entry.s3_role, env)
    if keys is not None:
        values["MINIO_ACCESS_KEY"], values["MINIO_SECRET_KEY"] = keys
    url = db_url_for(entry.db_role, env)
    if url is not None:
        values["METADATA_DB_URL"] = url
    return values


def process_basics(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    return {name: env[name] for name in PROCESS_BASICS if name in env}
