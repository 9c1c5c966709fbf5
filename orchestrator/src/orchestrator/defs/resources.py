"""The worker launcher: the one place that knows whether a worker runs as a process or a container."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError
from workers.runtime import RESULT_MARKER

# Connection settings a worker reads from its environment. They are forwarded as environment,
# never as Pipes extras, tags or metadata, so no secret reaches the event log.
CONNECTION_VARIABLES = (
    "METADATA_DB_URL",
    "MINIO_ENDPOINT",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "MINIO_BUCKET",
    "MINIO_REGION",
)
LAUNCH_MODES = ("subprocess", "docker")

Context = dg.AssetExecutionContext | dg.OpExecutionContext


class WorkerLauncher(dg.ConfigurableResource):
    """Launches `python -m <worker_package>.<name> --pipes` through Dagster Pipes.

    `mode` is `subprocess` (dev, the default) or `docker` (one image per worker).
    """

    mode: str = "subprocess"
    worker_package: str = "workers"
    image_prefix: str = "health-intake"
    image_tag: str = "latest"
    docker_network: str = ""

    def materialize(
        self, *, context: dg.AssetExecutionContext, worker: str, extras: Mapping[str, Any] | None = None
    ) -> dg.MaterializeResult:
        """Run the worker for an asset; fail unless it reported its materialization."""
        invocation = self._launch(context, worker, extras)
        for result in invocation.get_results(implicit_materializations=False):
            if isinstance(result, dg.MaterializeResult) and RESULT_MARKER in (result.metadata or {}):
                return result
        raise dg.Failure(description=f"{worker} worker exited without reporting a result")

    def run(
        self, *, context: dg.OpExecutionContext, worker: str, extras: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run the worker for an op; return the result it reported, or fail."""
        invocation = self._launch(context, worker, extras)
        for message in invocation.get_custom_messages():
            if isinstance(message, dict) and message.get(RESULT_MARKER) == worker:
                return message
        raise dg.Failure(description=f"{worker} worker exited without reporting a result")

    def _launch(self, context: Context, worker: str, extras: Mapping[str, Any] | None):
        if self.mode not in LAUNCH_MODES:
            raise dg.Failure(description=f"WORKER_LAUNCH_MODE must be one of {LAUNCH_MODES}, not {self.mode!r}")
        command = ["python", "-m", f"{self.worker_package}.{worker}", "--pipes"]
        try:
            if self.mode == "docker":
                return self._docker_client().run(
                    context=context,
                    image=f"{self.image_prefix}-{worker}:{self.image_tag}",
                    command=command,
                    extras=dict(extras or {}),
                    env=connection_env(),
                )
            command[0] = sys.executable
            return dg.PipesSubprocessClient().run(context=context, command=command, extras=dict(extras or {}))
        except DagsterPipesExecutionError as exc:
            reason = worker_error(context) or str(exc)
            raise dg.Failure(description=f"{worker} worker failed: {reason}") from None

    def _docker_client(self):
        from dagster_docker import PipesDockerClient

        container_kwargs: dict[str, Any] = {"labels": {"health-intake.worker": "true"}}
        if self.docker_network:
            container_kwargs["network"] = self.docker_network
        return PipesDockerClient(container_kwargs=container_kwargs)


def connection_env() -> dict[str, str]:
    return {name: os.environ[name] for name in CONNECTION_VARIABLES if name in os.environ}


def worker_error(context: Context) -> str | None:
    """The error the worker sent through Pipes as it closed, if any (Dagster logs it as an engine event)."""
    op_context = getattr(context, "op_execution_context", context)
    step_key = op_context.get_step_execution_context().step.key
    records = context.instance.get_records_for_run(
        run_id=context.run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT
    ).records
    for record in reversed(records):
        event = record.event_log_entry.dagster_event
        data = event.engine_event_data if event else None
        if event and event.step_key == step_key and data and data.error:
            # Pipes prefixes the class path; the operator needs the worker's own line.
            return data.error.message.strip().removeprefix("workers.runtime.WorkerError: ")
    return None


def launcher_from_env() -> WorkerLauncher:
    return WorkerLauncher(
        mode=os.environ.get("WORKER_LAUNCH_MODE", "subprocess"),
        image_prefix=os.environ.get("WORKER_IMAGE_PREFIX", "health-intake"),
        image_tag=os.environ.get("WORKER_IMAGE_TAG", "latest"),
        docker_network=os.environ.get("WORKER_DOCKER_NETWORK", ""),
    )
