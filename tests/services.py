"""Real services started locally, for the test suite and the benchmark alike: the SeaweedFS S3
server (scripts/s3_server.sh) on free ports, Postgres databases of their own, and ./dev_up.sh in a
fresh copy of the repository."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from botocore.config import Config as BotoConfig

from workers.store import CLIENT_CONFIG

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
S3_KEYS = ("minioadmin", "minioadmin")
# The S3 server's internal components listen on S3 port + 10000 .. + 10008 (scripts/s3_server.sh),
# its filer on S3 port + 10005.
INTERNAL_PORTS = range(10000, 10009)
FILER_PORT_OFFSET = 10005
# dev_up.sh starts its NATS server on the port after those (S3 port + 10009).
NATS_PORT_OFFSET = 10009


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self, connections: int = 10):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
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


def free_port_block(size: int = 1, lo: int = 20000, hi: int = 50000) -> int:
    """A port p such that p..p+size-1 are all free (the S3 server's internal ports sit at +10000)."""
    for _ in range(200):
        port = random.randrange(lo, hi)
        if all(port_is_free(p) for p in range(port, port + size)):
            return port
    raise RuntimeError("no free port block found")


def free_s3_port() -> int:
    """A free port whose S3-server internal ports (+10000 .. +10008) and dev_up.sh's NATS port
    (+10009) are free too."""
    while True:
        port = free_port_block()
        if all(port_is_free(port + offset) for offset in (*INTERNAL_PORTS, NATS_PORT_OFFSET)):
            return port


def start_s3_server(
    data_dir: Path,
    log_path: Path,
    keys: tuple[str, str] = S3_KEYS,
    port: int | None = None,
    identities: Path | None = None,
) -> tuple[subprocess.Popen, int]:
    """`identities`: an identities document (workers.roles render) instead of one all-powerful key."""
    port = port or free_s3_port()
    env = {**os.environ, "MINIO_ACCESS_KEY": keys[0], "MINIO_SECRET_KEY": keys[1]}
    if identities is not None:
        env["S3_IDENTITIES_FILE"] = str(identities)
    proc = subprocess.Popen(
        [str(REPO / "scripts/s3_server.sh"), str(data_dir), str(port)],
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, port


def wait_for_s3(server: S3Server, proc: subprocess.Popen, log_path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"S3 server exited: {log_path.read_text()[-2000:]}")
        try:
            server.client().list_buckets()
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    raise RuntimeError(f"S3 server did not answer within {timeout}s")


def stop_process_group(proc: subprocess.Popen, grace: float = 15) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def remove_bucket(server_or_client, name: str) -> None:
    """Removes a bucket with everything in it, through SeaweedFS's filer, below S3 and its Object Lock:
    over S3 a version under COMPLIANCE retention or legal hold cannot be deleted, by design. The filer
    drops the bucket's folder (every version, delete marker and upload) and its volumes; idempotent."""
    endpoint = getattr(server_or_client, "endpoint", None) or server_or_client.meta.endpoint_url
    parts = urllib.parse.urlsplit(endpoint)
    filer = f"http://{parts.hostname}:{parts.port + FILER_PORT_OFFSET}"
    request = urllib.request.Request(f"{filer}/buckets/{urllib.parse.quote(name)}?recursive=true", method="DELETE")
    urllib.request.urlopen(request, timeout=120).close()  # an error answer raises HTTPError


def create_postgres_database(prefix: str = "hp_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    name = sa.make_url(url).database
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def alembic_config(url: str) -> Config:
    config = Config(str(REPO / "alembic.ini"))
    config.attributes["url"] = url
    return config


def migrate(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def platform_environment(db_url: str, s3: S3Server, bucket: str) -> dict[str, str]:
    return {
        "METADATA_DB_URL": db_url,
        "MINIO_ENDPOINT": s3.endpoint,
        "MINIO_ACCESS_KEY": s3.access_key,
        "MINIO_SECRET_KEY": s3.secret_key,
        "MINIO_BUCKET": bucket,
        "WORKER_LAUNCH_MODE": "subprocess",
        # Failure-path tests fail at once; the convergence tests (tests/reliability) set their own.
        "INTAKE_STEP_RETRIES": "0",
    }


def fresh_copy(dest: Path) -> Path:
    """The files a clone would have (tracked plus new, unignored), without .venv or .local."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


class DevUpProcess:
    """./dev_up.sh in `copy` (see fresh_copy), as a user runs it, on free ports (or the ones given):
    stdin closed, in a session of its own, output to copy/dev_up.out; Ctrl-C (SIGINT) stops it."""

    def __init__(
        self, copy: Path, dagster_port: int | None = None, s3_port: int | None = None, sensor_interval: int = 5
    ):
        self.copy = copy
        self.dagster_port = dagster_port or free_port_block()
        self.s3_port = s3_port or free_s3_port()
        self.s3 = S3Server(f"http://127.0.0.1:{self.s3_port}", *S3_KEYS)
        self.log = copy / "dev_up.out"
        # Nothing of the caller's own platform: dev_up.sh picks its defaults (it sets WORKER_LAUNCH_MODE).
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("METADATA_", "MINIO_", "DAGSTER_")) and k != "WORKER_LAUNCH_MODE"
        }
        self.env = inherited | {
            "DAGSTER_PORT": str(self.dagster_port),
            "MINIO_ENDPOINT": self.s3.endpoint,
            "SENSOR_INTERVAL_SECONDS": str(sensor_interval),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> float:
        """Seconds until the log says 'UI ready'; RuntimeError with the log's tail if it exits or times out."""
        began = time.monotonic()
        # The log is appended to across starts: wait for this start's "UI ready", not an earlier one's.
        seen = self.log.read_text().count("UI ready") if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["./dev_up.sh"],
                cwd=self.copy,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while self.log.read_text().count("UI ready") <= seen:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dev_up.sh exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")
            if time.monotonic() - began > timeout:
                raise RuntimeError(
                    f"dev_up.sh did not bring the UI up in {timeout:.0f} s: {self.log.read_text()[-3000:]}"
                )
            time.sleep(1)
        return time.monotonic() - began

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C; dev_up.sh's exit code (subprocess.TimeoutExpired if it has not exited in `timeout`)."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Ctrl-C if it still runs; its process group is killed if that does not stop it in a minute."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.interrupt()
        except subprocess.TimeoutExpired:
            stop_process_group(self.proc)

    def kill_leftovers(self) -> None:
        """After a failure: stop(), then kill whatever still runs in the copy (dev_up.sh's children run
        in sessions of their own, so a group kill misses them)."""
        self.stop()
        for proc in Path("/proc").iterdir():
            try:
                inside = proc.name.isdigit() and Path(os.readlink(proc / "cwd")).is_relative_to(self.copy)
            except OSError:
                continue
            if inside:
                os.kill(int(proc.name), signal.SIGKILL)

    def graphql(self, query: str) -> dict:
        """The `data` of a query to the Dagster webserver's GraphQL."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.dagster_port}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["data"]


class Webserver:
    """`dagster-webserver -w workspace.yaml` on a free port with an instance of its own (DAGSTER_HOME
    under `home`), in a session of its own so stop() ends the runs it started as well."""

    def __init__(self, home: Path, env: dict[str, str], *args: str):
        self.port = free_port_block()
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / "webserver.log"
        command = ["dagster-webserver", "-h", "127.0.0.1", "-p", str(self.port), "-w", "workspace.yaml", *args]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / command[0]), *command[1:]],
                cwd=REPO,
                env={**env, "DAGSTER_HOME": str(home)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait(self, timeout: float = 120) -> Webserver:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/server_info", timeout=5).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dagster-webserver did not answer: {self.log.read_text()[-3000:]}") from None
                time.sleep(1)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        """The `data` of a GraphQL request."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)["data"]

    def stop(self) -> None:
        stop_process_group(self.proc)
