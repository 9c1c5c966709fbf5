"""Shared by the reliability suite: a Postgres-backed platform, and the ledger from which
docs/reliability.md is written at the end of every session that ran these tests. Running worker
processes and checking the invariants they leave: tests/helpers.py."""

from __future__ import annotations

import platform
from collections import Counter
from datetime import UTC, datetime

import pytest

from tests.services import REPO, migrate, platform_environment
from workers import layouts
from workers.db import make_engine

REPORT = REPO / "docs" / "reliability.md"


class Ledger(Counter):
    """Counts what the suite tried and found; rendered into docs/reliability.md."""

    def __init__(self) -> None:
        super().__init__()
        self.points: set[str] = set()
        self.bad_inputs: list[tuple[str, str, str]] = []  # case, key, outcome
        self.servers: set[str] = set()  # the S3 servers the immutability tests ran against
        self.convergence: list[tuple[str, float]] = []  # scenario, seconds until the drop was staged
        self.event_outages: list[tuple[int, int, int, float]] = []  # seed, drops, faults, seconds until all staged


@pytest.fixture(scope="session")
def ledger():
    counts = Ledger()
    yield counts
    # Only a run of the whole reliability suite rewrites the report; a partial run would misstate it.
    kinds = ("crash_trials", "concurrent_registrations", "overlapping_ticks", "outages_survived", "secrets_scans")
    if all(counts[kind] for kind in kinds):
        if counts.bad_inputs:
            write_report(counts)


def write_report(counts: Ledger) -> None:
    rows = [
        ("crash trials (SIGKILL at a distinct point, then re-run)", counts["crash_trials"]),
        ("crashes survived (every invariant held after the re-run)", counts["crashes_survived"]),
        ("concurrent registrations (processes racing for one group)", counts["concurrent_registrations"]),
        (
            "sensor ticks evaluated again over the same cursor (sequentially or concurrently)",
            counts["overlapping_ticks"],
        ),
        ("runs Dagster created twice for one run key (concurrent ticks; registered once)", counts["duplicate_runs"]),
        ("outages survived (object store or database down)", counts["outages_survived"]),
        ("bad inputs tried", counts["bad_inputs"]),
        ("raw overwrites attempted and refused by the server", counts["overwrites_refused"]),
        ("drops converged after the whole orchestrator was killed mid-run", counts["orchestrator_kills_converged"]),
        ("drops converged after the object store was down past every retry", counts["outages_converged"]),
        ("poison drops stopped at the retry limit, shown as needing attention", counts["poison_drops_held"]),
        (
            "drops staged once through a burst in which the bridge, NATS and the S3 server were killed",
            counts["event_outage_drops"],
        ),
        ("bridge, NATS and S3-server kills during those bursts", counts["event_outage_faults"]),
        ("files checked after faults", counts["files_checked"]),
        (
            "raw versions checked after faults (recorded, locked as recorded, alone at their key)",
            counts["raw_versions_checked"],
        ),
        ("raw versions unrecorded, unlocked or beside another version", counts["raw_versions_wrong"]),
        ("inbox versions or delete markers left after staging", counts["inbox_versions_left"]),
        ("files lost", counts["files_lost"]),
        ("files duplicated", counts["files_duplicated"]),
        ("secrets or PHI sentinels found outside the object store", counts["secrets_found"]),
    ]
    lines = [
        "# Reliability report",
        "",
        "Written by the test suite (`tests/reliability/`) at the end of its last full run; do not edit by hand.",
        f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node() or 'a'} "
        f"({platform.machine()}, Python {platform.python_version()}), real SeaweedFS S3 and Postgres 15.",
        "",
        "| what | count |",
        "| --- | ---: |",
        *[f"| {what} | {count} |" for what, count in rows],
        "",
        "Files lost, files duplicated, raw versions wrong, inbox versions left and secrets found must be 0; "
        "the tests fail otherwise.",
        "",
        "Crash points (`workers/faults.py`, point:pass): " + ", ".join(sorted(counts.points)),
        "",
        "Create-only raw writes verified against: "
        + (", ".join(sorted(counts.servers)) or "no server")
        + ". MinIO could not be run here (see tests/reliability/test_immutability.py).",
        "",
    ]
    if counts.convergence:
        lines += ["## Convergence: time until the drop was staged and its inbox cleaned, with no human action", ""]
        lines += ["| scenario | seconds |", "| --- | ---: |"]
        lines += [f"| {what} | {seconds:.0f} |" for what, seconds in counts.convergence]
        lines += ["", "Measured from the restart (orchestrator killed) or from the object store's return (outage).", ""]
    if counts.event_outages:
        lines += ["## Events mode: bursts with the bridge, NATS and the S3 server killed at seeded points", ""]
        lines += ["| seed | drops | kills | seconds until all staged |", "| ---: | ---: | ---: | ---: |"]
        lines += [f"| {seed} | {drops} | {kills} | {secs:.0f} |" for seed, drops, kills, secs in counts.event_outages]
        lines += ["", "EVENT_OUTAGES_SEED=<seed> replays a burst (tests/reliability/test_event_outages.py).", ""]
    if counts.bad_inputs:
        lines += ["## Bad inputs and their recorded outcomes", "", "| case | key | outcome |", "| --- | --- | --- |"]
        lines += [f"| {case} | `{shorten(key)}` | {outcome} |" for case, key, outcome in counts.bad_inputs]
        lines.append("")
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(lines))


def shorten(key: str) -> str:
    shown = key if len(key) <= 60 else key[:28] + "…" + key[-28:]
    return repr(shown)[1:-1].replace("|", "\\|").replace("`", "'")


@pytest.fixture
def pg_platform(monkeypatch, postgres_url, s3_server, bucket) -> dict[str, str]:
    """The platform environment on Postgres (the production database), layouts synced."""
    migrate(postgres_url)
    engine = make_engine(postgres_url)
    layouts.sync(engine, layouts.parse_definitions(layouts.packaged_definitions())[1])
    engine.dispose()
    env = platform_environment(postgres_url, s3_server, bucket)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
