"""The services a benchmark run owns: a SeaweedFS S3 server on free ports and a Postgres database.

Both are started for the run and removed after it, like the test suite's (tests/conftest.py),
so a run never touches a developer's dev endpoint or database.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from botocore.config import Config as BotoConfig
from workers.store import CLIENT_CONFIG

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
S3_KEYS = ("minioadmin", "minioadmin")
# The S3 server's internal components listen on S3 port + 10000 .. + 10008 (scripts/s3_server.sh).
INTERNAL_PORTS = range(10000, 10009)


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str = S3_KEYS[0]
    secret_key: str = S3_KEYS[1]

    def client(self, connections: int = 10):
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=CLIENT_CONFIG.merge(BotoConfig(max_pool_connections=connections)),
        )


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(with_internal_ports: bool = False) -> int:
    """A free port; with_internal_ports, one whose S3-server internal ports are free too."""
    for _ in range(500):
        port = random.randrange(20000, 50000)
        offsets = [0, *INTERNAL_PORTS] if with_internal_ports else [0]
        if all(port_is_free(port + offset) for offset in offsets):
            return port
    raise RuntimeError("no free port found")


def stop_process_group(proc: subprocess.Popen, grace: float = 15) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def s3_server(workdir: Path) -> Iterator[S3Endpoint]:
    """scripts/s3_server.sh on a free port, answering, until the block ends."""
    port = free_port(with_internal_ports=True)
    log_path = workdir / "s3.log"
    env = {**os.environ, "MINIO_ACCESS_KEY": S3_KEYS[0], "MINIO_SECRET_KEY": S3_KEYS[1]}
    proc = subprocess.Popen(
        [str(REPO / "scripts/s3_server.sh"), str(workdir / "s3"), str(port)],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = S3Endpoint(f"http://127.0.0.1:{port}")
    try:
        wait_for_s3(endpoint, proc, log_path)
        yield endpoint
    finally:
        stop_process_group(proc)


def wait_for_s3(endpoint: S3Endpoint, proc: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"S3 server exited: {log_path.read_text()[-2000:]}")
        try:
            endpoint.client().list_buckets()
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    raise RuntimeError(f"S3 server did not answer within {timeout} s; see {log_path}")


def create_bucket(endpoint: S3Endpoint, name: str, timeout: float = 30) -> None:
    """The gateway answers a moment before it takes writes: retry briefly."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            endpoint.client().create_bucket(Bucket=name)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A database of this run's own on the local Postgres, migrated; dropped afterwards."""
    name = f"hp_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sqlite_database(path: Path) -> str:
    url = f"sqlite:///{path}"
    migrate(url)
    return url


def migrate(url: str) -> None:
    config = Config(str(REPO / "alembic.ini"))
    config.attributes["url"] = url
    command.upgrade(config, "head")


def platform_environment(db_url: str, endpoint: S3Endpoint, bucket: str) -> dict[str, str]:
    """What a worker and the orchestrator read (README "Settings")."""
    return {
        "METADATA_DB_URL": db_url,
        "MINIO_ENDPOINT": endpoint.url,
        "MINIO_ACCESS_KEY": endpoint.access_key,
        "MINIO_SECRET_KEY": endpoint.secret_key,
        "MINIO_BUCKET": bucket,
        "WORKER_LAUNCH_MODE": "subprocess",
    }


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
