"""Where the launcher touches Dagster Pipes below its documented surface. Checked against
dagster 1.13.27 / dagster-docker 0.29.27: on an upgrade, re-read the parts named here first.

- `run_subprocess`: PipesSubprocessClient passes the whole of the launching process's
  environment to the worker (`{**os.environ, ...}`), role keys and all. We open the Pipes session
  ourselves (`dg.open_pipes_session`, public) and start the process with exactly the worker's
  declared settings.
- `ContextFileInjector` + `ContainerClient._create_container` (a private method of
  PipesDockerClient): PipesDockerClient puts the whole Pipes context, extras included, into one
  environment variable. A group of thousands of files outgrows what an exec'd process may hold
  in one variable (128 KiB on Linux), and `docker inspect` would show every file key. We write
  the context as a file into the created container instead, before it starts.
- `ContainerClient` also replaces the container's `wait` (Podman's wait endpoint now and then
  never answers for a container that already exited; seen about once in fifteen short-lived
  containers), removes the container (PipesDockerClient stops it, never removes it) and keeps the
  worker's last lines for the failure message.
- `TailKeepingLogsReader` subclasses PipesDockerLogsMessageReader and calls
  `dagster._core.pipes.utils.extract_message_or_forward_to_stdout` (private) to split Pipes
  messages from the worker's own lines.
- `worker_error` reads the run's engine events for the error the worker sent as it closed:
  Pipes logs it there, not in the exception it raises.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import docker.errors
from dagster._core.pipes.utils import extract_message_or_forward_to_stdout
from dagster_docker import PipesDockerClient
from dagster_docker.pipes import PipesDockerLogsMessageReader

Context = dg.AssetExecutionContext | dg.OpExecutionContext
OUTPUT_TAIL_LINES = 20
# Inside the worker container; /tmp is writable by the image's non-root user.
CONTEXT_PATH = "/tmp/dagster-pipes-context.json"
# The worker images run as uid 10001 (images/worker.Dockerfile); the file is its alone.
WORKER_UID = 10001


class WorkerProcessFailed(Exception):
    """The worker process exited non-zero."""


def run_subprocess(
    context: Context, command: Sequence[str], env: Mapping[str, str], extras: Mapping[str, Any]
) -> dg.PipesClientCompletedInvocation:
    """Run `command` under a Pipes session with exactly `env` (plus the session's own variables)."""
    with dg.open_pipes_session(
        context=context,
        context_injector=dg.PipesTempFileContextInjector(),
        message_reader=dg.PipesTempFileMessageReader(),
        extras=dict(extras),
    ) as session:
        process = subprocess.Popen(list(command), env={**env, **session.get_bootstrap_env_vars()})
        try:
            if process.wait() != 0:
                raise WorkerProcessFailed(f"External execution process failed with code {process.returncode}")
        except dg.DagsterExecutionInterruptedError:
            process.terminate()
            process.wait(timeout=20)
            raise
    return dg.PipesClientCompletedInvocation(session)


class ContextFileInjector(dg.PipesContextInjector):
    """Hands the worker a path instead of the context; ContainerClient writes the file there."""

    payload: bytes = b""

    @contextmanager
    def inject_context(self, context_data) -> Iterator[dict[str, Any]]:
        self.payload = json.dumps(context_data).encode()
        yield {"path": CONTEXT_PATH}

    def no_messages_debug_text(self) -> str:
        return f"Pipes context written into the container at {CONTEXT_PATH}."


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
    """PipesDockerClient that keeps hold of its container (see the module's header)."""

    container = None

    def __init__(self):
        self.context_file = ContextFileInjector()
        super().__init__(context_injector=self.context_file, message_reader=TailKeepingLogsReader())

    def _create_container(self, **kwargs):
        self.container = super()._create_container(**kwargs)
        container = self.container
        container.put_archive("/tmp", context_archive(self.context_file.payload))
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


def context_archive(payload: bytes) -> bytes:
    """A tar holding the Pipes context file, readable by the worker's user only."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(CONTEXT_PATH.removeprefix("/tmp/"))
        info.size, info.mode, info.uid, info.gid = len(payload), 0o400, WORKER_UID, WORKER_UID
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def worker_lines(text: str) -> list[str]:
    # Pipes' own protocol lines share the stream; the operator needs the worker's lines.
    return [line for line in text.splitlines() if line.strip() and "__dagster_pipes_version" not in line]


def wait_for_exit(container, poll: float = 0.2) -> int:
    """The container's exit code once it has stopped, polled rather than waited for."""
    while True:
        container.reload()
        if container.status in ("exited", "stopped", "dead"):
            return int(container.attrs["State"]["ExitCode"])
        time.sleep(poll)


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
