"""The worker launcher: the one place that knows whether a worker runs as a process or a container."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import dagster as dg
import docker.errors
from dagster._core.errors import DagsterPipesExecutionError
from dagster._core.pipes.utils import extract_message_or_forward_to_stdout
from dagster_docker import PipesDockerClient
from dagster_docker.pipes import PipesDockerLogsMessageReader
from dagster_pipes import DagsterPipesError
from workers.roles import role_credentials, role_of
from workers.runtime import RESULT_MARKER
from workers.settings import SettingsError

# Connection settings a worker reads from its environment. They are forwarded as environment,
# never as Pipes extras, tags or metadata, so no secret reaches the event log. Where a role's own
# keys are set (MINIO_<ROLE>_ACCESS_KEY / _SECRET_KEY, workers.roles), the worker gets those
# instead of MINIO_ACCESS_KEY / MINIO_SECRET_KEY.
CONNECTION_VARIABLES = (
    "METADATA_DB_URL",
    "DB_CONNECT_ATTEMPTS",
    "DB_CONNECT_BACKOFF_SECONDS",
    "MINIO_ENDPOINT",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "MINIO_BUCKET",
    "MINIO_REGION",
)
LAUNCH_MODES = ("subprocess", "docker")
# Workers without an image of their own run in another worker's image (same package, same
# dependencies): the layout registry sync ships with the classifier that reads the registry,
# the raw zone audit with the stager that writes the raw zone.
IMAGE_OF_WORKER = {"layouts": "classifier", "audit": "stager"}
CONTAINER_LABEL = "health-intake.worker"
OUTPUT_TAIL_LINES = 20

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
        invocation, exit_note = self._launch(context, worker, extras)
        for result in invocation.get_results(implicit_materializations=False):
            if isinstance(result, dg.MaterializeResult) and RESULT_MARKER in (result.metadata or {}):
                return result
        raise dg.Failure(description=f"{worker} worker exited without reporting a result{exit_note}")

    def run(
        self, *, context: dg.OpExecutionContext, worker: str, extras: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run the worker for an op; return the result it reported, or fail."""
        invocation, exit_note = self._launch(context, worker, extras)
        for message in invocation.get_custom_messages():
            if isinstance(message, dict) and message.get(RESULT_MARKER) == worker:
                return message
        raise dg.Failure(description=f"{worker} worker exited without reporting a result{exit_note}")

    def image_for(self, worker: str) -> str:
        return f"{self.image_prefix}-{IMAGE_OF_WORKER.get(worker, worker)}:{self.image_tag}"

    def _launch(self, context: Context, worker: str, extras: Mapping[str, Any] | None):
        """Run the worker to completion; return its invocation and a note on how it exited."""
        if self.mode not in LAUNCH_MODES:
            raise dg.Failure(description=f"WORKER_LAUNCH_MODE must be one of {LAUNCH_MODES}, not {self.mode!r}")
        if self.mode == "docker":
            return self._launch_container(context, worker, extras)
        command = [sys.executable, "-m", f"{self.worker_package}.{worker}", "--pipes"]
        env = worker_env(worker)
        try:
            client = dg.PipesSubprocessClient()
            return client.run(context=context, command=command, extras=dict(extras or {}), env=env), ""
        except DagsterPipesExecutionError as exc:
            reason = worker_error(context) or str(exc)
            raise dg.Failure(description=f"{worker} worker failed: {reason}") from None

    def _launch_container(self, context: Context, worker: str, extras: Mapping[str, Any] | None):
        client = ContainerClient()
        env = worker_env(worker)
        try:
            invocation = client.run(
                context=context,
                image=self.image_for(worker),
                command=["--pipes"],
                extras=dict(extras or {}),
                env=env,
                container_kwargs=self._container_kwargs(context, worker),
            )
            return invocation, f" (container exited with code 0; output tail: {client.output_tail()})"
        except DagsterPipesError:
            reason = worker_error(context) or f"container exited with code {client.exit_code()}: {client.output_tail()}"
            raise dg.Failure(description=f"{worker} worker failed: {reason}") from None
        except docker.errors.DockerException as exc:
            raise dg.Failure(description=f"{worker} worker could not start: {docker_problem(exc)}") from None
        finally:
            client.remove_container()

    def _container_kwargs(self, context: Context, worker: str) -> dict[str, Any]:
        # The entrypoint is named here, not taken from the image, so a worker without an image of
        # its own (IMAGE_OF_WORKER) runs its own module.
        kwargs: dict[str, Any] = {
            "entrypoint": ["python", "-m", f"{self.worker_package}.{worker}"],
            "labels": {CONTAINER_LABEL: worker, "health-intake.run-id": context.run.run_id},
        }
        if self.docker_network:
            kwargs["network"] = self.docker_network
        return kwargs


class TailKeepingLogsReader(PipesDockerLogsMessageReader):
    """Reads Pipes messages from the container's log stream, as its parent does, and keeps the
    worker's own last lines for the failure message."""

    def __init__(self):
        super().__init__()
        self.tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)

    def consume_docker_logs(self, container) -> None:
        for chunk in container.logs(stdout=True, stderr=True, stream=True, follow=True):
            text = chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else str(chunk)
            extract_message_or_forward_to_stdout(self._handler, text)
            self.tail.extend(worker_lines(text))


class ContainerClient(PipesDockerClient):
    """PipesDockerClient that keeps hold of its container: PipesDockerClient stops it but never
    removes it, and its failure names neither the exit code nor what the worker printed."""

    container = None

    def __init__(self):
        super().__init__(message_reader=TailKeepingLogsReader())

    def _create_container(self, **kwargs):
        self.container = super()._create_container(**kwargs)
        container = self.container
        container.wait = lambda **_: {"StatusCode": wait_for_exit(container)}
        return container

    def exit_code(self) -> int | str:
        return wait_for_exit(self.container) if self.container else "?"

    def output_tail(self) -> str:
        lines = list(self.message_reader.tail)
        if not lines and self.container is not None:
            # A container that died at once can end before the log stream attached.
            lines = worker_lines(self.container.logs(stdout=True, stderr=True).decode(errors="replace"))
        return " | ".join(lines[-OUTPUT_TAIL_LINES:]) or "(no output)"

    def remove_container(self, timeout: float = 15) -> None:
        """Remove the container and wait until the engine no longer lists it: Podman has answered a
        removal while its own exit clean-up still held the container."""
        if self.container is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.container.remove(force=True)
                self.container.reload()
            except docker.errors.NotFound:
                return
            except docker.errors.APIError:
                pass  # busy in the engine's clean-up: retried below
            if time.monotonic() > deadline:
                raise dg.Failure(description=f"worker container {self.container.short_id} could not be removed")
            time.sleep(0.5)


def worker_lines(text: str) -> list[str]:
    # Pipes' own protocol lines share the stream; the operator needs the worker's lines.
    return [line for line in text.splitlines() if line.strip() and "__dagster_pipes_version" not in line]


def wait_for_exit(container, poll: float = 0.2) -> int:
    """The container's exit code once it has stopped. Polled, not the engine's wait call: Podman's
    wait endpoint now and then never answers for a container that has already exited (seen here
    about once in fifteen short-lived containers), which would hang the step forever."""
    while True:
        container.reload()
        if container.status in ("exited", "stopped", "dead"):
            return int(container.attrs["State"]["ExitCode"])
        time.sleep(poll)


def docker_problem(exc: Exception) -> str:
    """One line on why no container could be run."""
    if isinstance(exc, docker.errors.ImageNotFound):
        return f"image not found ({exc.explanation}); build the images: make images"
    if isinstance(exc, docker.errors.APIError):
        return f"the container engine refused: {exc.explanation}"
    return f"no container engine answers at DOCKER_HOST={os.environ.get('DOCKER_HOST', '(unset)')}: {exc}"


def connection_env(worker: str, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The connection settings for one worker: its role's object-store keys where they are set.
    A worker without a role of its own gets the launching process's keys (in Docker mode the
    read-only discovery role's)."""
    values = {name: env[name] for name in CONNECTION_VARIABLES if name in env}
    role = role_of(worker)
    keys = role_credentials(role, env) if role else None
    if keys is not None:
        values["MINIO_ACCESS_KEY"], values["MINIO_SECRET_KEY"] = keys
    return values


def worker_env(worker: str) -> dict[str, str]:
    try:
        return connection_env(worker)
    except SettingsError as exc:
        raise dg.Failure(description=f"{worker} worker not started: {exc}") from None


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
