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
  containers) and removes the container (PipesDockerClient stops it, never removes it).
- `ContainerMessageFile`: the worker's Pipes messages go to a file in its container, read after it
  exits, instead of dagster-docker's log-stream reader, which lost a report of thousands of files.
- `worker_error` reads the run's engine events for the error the worker sent as it closed:
  Pipes logs it there, not in the exception it raises.
- `MonitoredRunLauncher` (the instance's run launcher in both modes, dagster.yaml) is Dagster's
  `DefaultRunLauncher` plus the run-worker health check it lacks: without one, run monitoring
  cannot tell that a run's process died with its code server (the orchestrator killed, a power
  loss) and the run stays STARTED for ever. It asks the code server recorded in the run's
  `.dagster/grpc_info` tag (set by `DefaultRunLauncher.launch_run_from_grpc_client`) for its
  current runs (`DagsterGrpcClient.get_current_runs`, the call the server answers from the
  executions it holds). `dagster dev` puts a proxy in front of the code server, which does not
  forward that call (it answers UNIMPLEMENTED: taken for an unreachable server, every run older
  than the grace was failed while it ran); the proxy forwards `CanCancelExecution`, which the code
  server answers from the same executions, so that is asked instead.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
import docker.errors
import grpc  # type: ignore[import-untyped]  # grpcio ships no types (types-grpcio is not installed)
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.types import CanCancelExecutionRequest, CanCancelExecutionResult, GetCurrentRunsResult
from dagster._serdes import deserialize_value
from dagster_docker import PipesDockerClient

from workers.settings import SettingsError, load_launch_settings

Context = dg.AssetExecutionContext | dg.OpExecutionContext
OUTPUT_TAIL_LINES = 20
# Inside the worker container; /tmp is writable by the image's non-root user.
CONTEXT_PATH = "/tmp/dagster-pipes-context.json"
MESSAGES_PATH = "/tmp/dagster-pipes-messages.jsonl"
# Every worker container carries its run's id (resources.container_kwargs).
RUN_LABEL = "health-intake.run-id"
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


class ContainerMessageFile(dg.PipesMessageReader):
    """The worker writes its Pipes messages to a file in its container, read once it has exited.

    Not the log stream (dagster-docker's default): there, a report listing thousands of files was
    cut short (seen on Podman: a 3 MB message line ended mid-record, and the closing message never
    arrived), and the report was lost although the worker had succeeded.
    """

    handler: Any = None  # dagster's PipesMessageHandler, set by read_messages

    @contextmanager
    def read_messages(self, handler) -> Iterator[dict[str, Any]]:
        self.handler = handler
        yield {"path": MESSAGES_PATH}

    def deliver(self, container) -> None:
        """Hand every message the worker wrote to Dagster; none when it never opened Pipes."""
        try:
            lines = read_file(container, MESSAGES_PATH).splitlines()
        except docker.errors.NotFound:
            return
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # a line cut short by a worker killed mid-write carries nothing to report
            self.handler.handle_message(message)

    def no_messages_debug_text(self) -> str:
        return f"Pipes messages read from {MESSAGES_PATH} in the container after it exited."


class ContainerClient(PipesDockerClient):
    """PipesDockerClient that keeps hold of its container (see the module's header)."""

    container = None

    def __init__(self):
        self.context_file = ContextFileInjector()
        self.messages = ContainerMessageFile()
        super().__init__(context_injector=self.context_file, message_reader=self.messages)

    def _create_container(self, **kwargs):  # type: ignore[override]  # called with keywords only
        self.container = super()._create_container(**kwargs)
        self.container.put_archive("/tmp", context_archive(self.context_file.payload))
        self.container.wait = self._wait
        return self.container

    def _wait(self, **_) -> dict[str, int]:
        """Until the container has exited; then its messages go to Dagster, its output to the step's log."""
        code = wait_for_exit(self.container)
        self.messages.deliver(self.container)
        sys.stdout.write(self.output())
        return {"StatusCode": code}

    def exit_code(self) -> int | str:
        return wait_for_exit(self.container) if self.container else "?"

    def output(self) -> str:
        return self.container.logs(stdout=True, stderr=True).decode(errors="replace") if self.container else ""

    def output_tail(self) -> str:
        lines = worker_lines(self.output())
        return " | ".join(lines[-OUTPUT_TAIL_LINES:]) or "(no output)"

    def remove_container(self) -> None:
        if self.container is not None and not remove_until_gone(self.container):
            raise dg.Failure(description=f"worker container {self.container.short_id} could not be removed")


def remove_until_gone(container, timeout: float = 15) -> bool:
    """Force-remove a container and wait until the engine no longer lists it (Podman has answered a
    removal while its own exit clean-up still held the container); False if it is still there."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            container.remove(force=True)
            container.reload()
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError:
            pass  # busy in the engine's clean-up: retried below
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def read_file(container, path: str, attempts: int = 4) -> bytes:
    """One file out of a container. Podman's archive endpoint now and then answers a multi-megabyte
    file with a truncated tar (seen here about once in five at 4 MB); asking again gets it whole."""
    for attempt in range(1, attempts):
        try:
            return unpack_file(container.get_archive(path)[0])
        except tarfile.TarError:
            time.sleep(0.2 * attempt)
    return unpack_file(container.get_archive(path)[0])


def unpack_file(stream) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        content = tar.extractfile(member) if member is not None else None
        if content is None:
            raise tarfile.TarError("the archive holds no regular file")
        return content.read()


def context_archive(payload: bytes) -> bytes:
    """A tar holding the Pipes context file, readable by the worker's user only."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(CONTEXT_PATH.removeprefix("/tmp/"))
        info.size, info.mode, info.uid, info.gid = len(payload), 0o400, WORKER_UID, WORKER_UID
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def worker_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


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


# --- run monitoring -------------------------------------------------------------------------

# A code server that does not answer for this long is taken for dead: its runs died with it
# (a restart starts new servers, never the old ones). Shorter silences (a busy server) are not.
UNREACHABLE_GRACE_SECONDS = 30.0


class MonitoredRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose run workers run monitoring can check (see the module's header)."""

    def __init__(self, inst_data=None):
        super().__init__(inst_data=inst_data)
        self._unreachable_since: dict[str, float] = {}

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        info = run.tags.get(GRPC_INFO_TAG)
        if not info:
            # Not launched through a code server (yet): nothing to ask; the start timeout covers it.
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run names no code server", transient=True)
        server = json.loads(info)
        client = DagsterGrpcClient(
            port=server.get("port"),
            socket=server.get("socket"),
            host=server.get("host"),
            use_ssl=bool(server.get("use_ssl", False)),
        )
        try:
            holds_it = holds_run(client, run.run_id)
        except DagsterUserCodeUnreachableError:
            first = self._unreachable_since.setdefault(run.run_id, time.monotonic())
            if time.monotonic() - first < UNREACHABLE_GRACE_SECONDS:
                return CheckRunHealthResult(WorkerStatus.RUNNING, "code server not answering (yet)", transient=True)
            del self._unreachable_since[run.run_id]
            return self.lost(
                run,
                WorkerStatus.FAILED,
                f"the code server that ran it has not answered for {UNREACHABLE_GRACE_SECONDS:g} s "
                "(orchestrator stopped or killed)",
            )
        self._unreachable_since.pop(run.run_id, None)
        if holds_it:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return self.lost(run, WorkerStatus.NOT_FOUND, "the code server that ran it holds no such run")

    def lost(self, run: DagsterRun, status: WorkerStatus, why: str) -> CheckRunHealthResult:
        """The verdict on a run whose process is gone. Its worker containers outlive it (the engine
        holds them, not the process that died): they are removed before the run is marked failed, so
        no worker of a failed run goes on touching the store beside the retry's."""
        return CheckRunHealthResult(status, f"{why}: its process is gone{remove_run_containers(run.run_id).note()}")


def holds_run(client: DagsterGrpcClient, run_id: str) -> bool:
    """Whether the code server behind `client` is executing the run. DagsterUserCodeUnreachableError
    when it does not answer (an UNIMPLEMENTED answer is an answer: see the module's header)."""
    try:
        return run_id in deserialize_value(client.get_current_runs(), GetCurrentRunsResult).current_runs
    except DagsterUserCodeUnreachableError as exc:
        cause = exc.__cause__
        if not (isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNIMPLEMENTED):
            raise
    answer = client.can_cancel_execution(CanCancelExecutionRequest(run_id=run_id))
    return deserialize_value(answer, CanCancelExecutionResult).can_cancel


@dataclass(frozen=True)
class Removal:
    """What became of a lost run's worker containers."""

    removed: tuple[str, ...] = ()  # short ids
    left: tuple[str, ...] = ()  # short ids still listed by the engine
    problem: str = ""  # the engine refused or did not answer

    def note(self) -> str:
        """For the run's verdict: nothing when there was nothing to remove."""
        parts = [f"removed its worker container(s) {', '.join(self.removed)}"] if self.removed else []
        parts += [f"could not remove {', '.join(self.left)}"] if self.left else []
        parts += [f"its worker containers were not looked for: {self.problem}"] if self.problem else []
        return "".join(f"; {part}" for part in parts)


def remove_run_containers(run_id: str) -> Removal:
    """Force-remove the worker containers labelled with `run_id` (Docker mode). An engine that
    cannot be reached is told in the caller's verdict text, not raised: the run is failed either
    way, and the retry's workers are safe beside a late one (create-only copies, conditional
    deletes, one submission per content)."""
    try:
        if load_launch_settings().mode != "docker":
            return Removal()
    except SettingsError:
        return Removal()  # a bad launch setting fails every launch with its own message; nothing was started
    try:
        engine = docker.from_env(timeout=30)
        containers = engine.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})
        gone = {container.short_id: remove_until_gone(container) for container in containers}
    except docker.errors.DockerException as exc:
        return Removal(problem=f"the engine refused or did not answer ({type(exc).__name__})")
    return Removal(
        removed=tuple(short for short, ok in gone.items() if ok),
        left=tuple(short for short, ok in gone.items() if not ok),
    )
