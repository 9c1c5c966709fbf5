"""End to end: drops through `dagster dev` (sensor -> job -> staged), as ./dev_up.sh brings it up.

dev_up.sh runs in a temporary copy of the repository (tracked and new files, as
tests/services.py's fresh_copy makes it) on free ports, with SENSOR_INTERVAL_SECONDS small. The copy's
.venv is a directory of links into this checkout's .venv, stamped as installed, so dev_up.sh
skips pip and never writes into the shared venv. Two phases:
- latency: single drops one after another, each timed from its marker's upload to its
  submission's staged_at;
- throughput: K drops at once, submissions per hour from the first marker to the last staged.
Each run's start-up comes from Dagster's GraphQL: run creation to its first step's start. A drop in a
batch run (register_submissions_from_groups_job) shares its run's figures with the batch's other drops.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from bench.services import REPO
from tests.services import DevUpProcess, fresh_copy
from workers.inbox import group_id

BUCKET = "health-raw"
CLAIMS = "member_id,amount\n1,10\n2,{drop}\n"
JOBS = ("register_submission_from_group_job", "register_submissions_from_groups_job")
RUNS_QUERY = """{ runsOrError {
  ... on Runs { results { runId pipelineName status creationTime startTime endTime tags { key value }
    stepStats { stepKey startTime endTime }
    eventConnection { events { __typename ... on MessageEvent { timestamp } } } } } } }"""
# Run lifecycle events, in order: the gaps between them split a run's start-up.
LIFECYCLE = ("RunEnqueuedEvent", "RunDequeuedEvent", "RunStartingEvent", "RunStartEvent")


def link_venv(copy: Path) -> None:
    """copy/.venv: links to this checkout's venv entries, plus the install stamp scripts/install.sh expects."""
    venv = copy / ".venv"
    venv.mkdir()
    for entry in (REPO / ".venv").iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    inputs = b"".join((copy / name).read_bytes() for name in INSTALL_INPUTS)
    (venv / ".installed").write_text(hashlib.sha256(inputs).hexdigest()[:16] + "\n")


INSTALL_INPUTS = ("constraints.txt", "workers/pyproject.toml", "orchestrator/pyproject.toml")


class DevUp(DevUpProcess):
    def staged(self) -> dict[str, datetime]:
        """grouping key -> staged_at, from the dev metadata DB (SQLite)."""
        engine = sa.create_engine(f"sqlite:///{self.copy / '.local/metadata.db'}", hide_parameters=True)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT grouping_key, staged_at FROM submission WHERE status = 'staged'"))
            result = {key: as_utc(value) for key, value in rows}
        engine.dispose()
        return result


def as_utc(value) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def drop(s3, name: str) -> tuple[str, float]:
    """One drop, data first and marker last; (grouping key, marker upload time)."""
    key = f"inbox/bench/unknown/{name}/"
    put_drop(s3, key, name)
    return key, time.time()


def put_drop(s3, key: str, name: str) -> None:
    """Bytes of the drop's own: identical content elsewhere would be registered as its duplicate, not staged."""
    s3.put_object(Bucket=BUCKET, Key=key + "medical_claims.csv", Body=CLAIMS.format(drop=name).encode())
    s3.put_object(Bucket=BUCKET, Key=key + "_SUCCESS", Body=b"")


def wait_staged(platform: DevUp, keys: set[str], timeout: float) -> dict[str, datetime]:
    deadline = time.monotonic() + timeout
    while True:
        staged = platform.staged()
        if keys <= staged.keys():
            return {k: staged[k] for k in keys}
        if time.monotonic() > deadline:
            statuses = sorted(f"{', '.join(groups_of(run))}: {run['status']}" for run in registration_runs(platform))
            raise RuntimeError(
                f"{len(keys - staged.keys())} of {len(keys)} drops not staged in {timeout:.0f} s; runs: {statuses}; "
                f"dagster.log ends: {(platform.copy / '.local/dagster.log').read_text()[-3000:]}"
            )
        time.sleep(0.5)


def run_breakdown(platform: DevUp, markers: dict[str, float], staged: dict[str, datetime]) -> list[dict]:
    """Per drop: marker -> run created (sensor) -> first step starts (run start-up) -> steps -> staged."""
    by_group = finished_runs(platform, {group_id(key) for key in markers})
    rows = []
    for key, marker_at in markers.items():
        run = by_group[group_id(key)]
        steps = [s for s in run["stepStats"] if s["startTime"] and s["endTime"]]
        first_step = min(s["startTime"] for s in steps)
        latency = staged[key].timestamp() - marker_at
        rows.append(
            {
                "grouping_key": key,
                "latency_seconds": latency,
                "sensor_wait_seconds": run["creationTime"] - marker_at,
                "run_start_up_seconds": first_step - run["creationTime"],
                "steps_seconds": sum(s["endTime"] - s["startTime"] for s in steps),
                "run_seconds": run["endTime"] - run["creationTime"],
            }
        )
        rows[-1]["run_start_up_share_of_latency"] = rows[-1]["run_start_up_seconds"] / latency
        rows[-1] |= start_up_parts(run, first_step)
    return rows


def bare_chain(platform: DevUp, name: str) -> float:
    """The floor: the job's three workers as bare processes, one after another, on a drop under
    another INBOX_PREFIX (so the sensor never sees it); seconds from the first spawn to the last exit."""
    key = f"floor/bench/unknown/{name}/"
    put_drop(platform.s3.client(), key, name)
    began = time.perf_counter()
    in_dev_shell(platform, f"python -m workers.classifier --grouping-key {key}")
    registered = json.loads(in_dev_shell(platform, f"python -m workers.registrar --grouping-key {key}"))
    in_dev_shell(platform, f"python -m workers.stager --submission-id {registered['submission_id']}")
    return time.perf_counter() - began


def in_dev_shell(platform: DevUp, command: str) -> str:
    done = subprocess.run(
        ["bash", "-c", f"source .local/dev.env && INBOX_PREFIX=floor/ {command}"],
        cwd=platform.copy,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command}: {done.stderr[-2000:]}")
    return done.stdout


def start_up_parts(run: dict, first_step: float) -> dict[str, float]:
    """Run creation -> starting (queue, when the instance queues) -> started (run worker process up, code
    loaded) -> first step."""
    seen = {}
    for event in run["eventConnection"]["events"]:
        if event["__typename"] in LIFECYCLE:
            seen.setdefault(event["__typename"], int(event["timestamp"]) / 1000)
    if not {"RunStartingEvent", "RunStartEvent"} <= seen.keys():
        return {}
    return {
        "created_to_starting_seconds": seen["RunStartingEvent"] - run["creationTime"],
        "run_process_start_seconds": seen["RunStartEvent"] - seen["RunStartingEvent"],
        "start_to_first_step_seconds": first_step - seen["RunStartEvent"],
        "lifecycle_events": sorted(seen),
    }


def finished_runs(platform: DevUp, groups: set[str], timeout: float = 120) -> dict[str, dict]:
    """group id -> its successful run; the submission is staged a moment before its run ends."""
    deadline = time.monotonic() + timeout
    while True:
        runs = registration_runs(platform)
        by_group = {group: run for run in runs if run["status"] == "SUCCESS" for group in groups_of(run)}
        if groups <= by_group.keys():
            return by_group
        if time.monotonic() > deadline:
            raise RuntimeError(f"runs for {sorted(groups - by_group.keys())} did not succeed in {timeout:.0f} s")
        time.sleep(0.5)


def registration_runs(platform: DevUp) -> list[dict]:
    return [run for run in platform.graphql(RUNS_QUERY)["runsOrError"]["results"] if run["pipelineName"] in JOBS]


def groups_of(run: dict) -> list[str]:
    """The group ids a run registers: its group tag, or a batch's drop tags (health-intake/drop.<group id>)."""
    single = [t["value"] for t in run["tags"] if t["key"] == "health-intake/group"]
    batch = [t["key"].split(".", 1)[1] for t in run["tags"] if t["key"].startswith("health-intake/drop.")]
    return single + batch


def summary(rows: list[dict]) -> dict:
    names = [k for k, v in rows[0].items() if isinstance(v, float)]
    return {name: statistics.median(row[name] for row in rows) for name in names}


def run(workdir: Path, drops: int, singles: int, sensor_interval: int, log) -> dict:
    copy = fresh_copy(workdir / "repo")
    link_venv(copy)
    platform = DevUp(copy, sensor_interval=sensor_interval)
    try:
        up_seconds = platform.start()
        where = f"dagster :{platform.dagster_port}, S3 {platform.s3.endpoint}"
        log(f"end to end: dev_up.sh up in {up_seconds:.0f} s ({where})")
        s3 = platform.s3.client()
        single_rows = []
        for i in range(singles):
            key, marker_at = drop(s3, f"single-{i:03d}")
            staged = wait_staged(platform, {key}, timeout=300 + sensor_interval)
            single_rows += run_breakdown(platform, {key: marker_at}, staged)
            log(f"end to end: single drop {i + 1}: {single_rows[-1]['latency_seconds']:.1f} s marker to staged")
        markers = dict(drop(s3, f"burst-{i:03d}") for i in range(drops))
        began = min(markers.values())
        staged = wait_staged(platform, set(markers), timeout=120 + 60 * drops)
        elapsed = max(moment.timestamp() for moment in staged.values()) - began
        burst_rows = run_breakdown(platform, markers, staged)
        log(f"end to end: {drops} drops at once staged in {elapsed:.1f} s")
        floors = [bare_chain(platform, f"floor-{i:03d}") for i in range(max(singles, 1))]
        log(f"end to end: the three workers as bare processes: {statistics.median(floors):.1f} s")
        mode = discovery_mode(copy)
    finally:
        platform.kill_leftovers()  # stop(), then whatever dev_up left running in the copy
    listing_rows = listing_singles(workdir / "repo-listing", singles, sensor_interval, log) if mode == "events" else []
    return {
        "sensor_interval_seconds": sensor_interval,
        "metadata_db": "sqlite (dev mode default)",
        "dev_up_seconds": up_seconds,
        "floor_bare_worker_chain_seconds": statistics.median(floors),
        "all_floor_seconds": floors,
        "discovery_mode": mode,
        "single_drops": {"count": singles, "median": summary(single_rows), "drops": single_rows},
        # The same single drops with DISCOVERY_MODE=listing (a copy of its own: a SeaweedFS data
        # directory started again on new ports waited on its old plugin ports past dev_up's 120 s).
        "single_drops_listing": (
            {"count": singles, "median": summary(listing_rows), "drops": listing_rows} if listing_rows else None
        ),
        "burst": {
            "drops": drops,
            "seconds_first_marker_to_last_staged": elapsed,
            "submissions_per_hour": drops * 3600 / elapsed,
            "median": summary(burst_rows),
            "drops_detail": burst_rows,
        },
    }


def discovery_mode(copy: Path) -> str:
    """The DISCOVERY_MODE dev_up.sh chose (written to .local/dev.env)."""
    for line in (copy / ".local/dev.env").read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        if name.strip() == "DISCOVERY_MODE":
            return value.strip().strip("'\"")
    return "listing"


def listing_singles(where: Path, singles: int, sensor_interval: int, log) -> list[dict]:
    """Single drops again, with the sensor listing the inbox (DISCOVERY_MODE=listing), through
    dev_up in a fresh copy at `where`."""
    copy = fresh_copy(where)
    link_venv(copy)
    platform = DevUp(copy, sensor_interval=sensor_interval)
    platform.env["DISCOVERY_MODE"] = "listing"
    rows: list[dict] = []
    try:
        platform.start()
        s3 = platform.s3.client()
        for i in range(singles):
            key, marker_at = drop(s3, f"listing-single-{i:03d}")
            staged = wait_staged(platform, {key}, timeout=300 + sensor_interval)
            rows += run_breakdown(platform, {key: marker_at}, staged)
            log(f"end to end, listing mode: single drop {i + 1}: {rows[-1]['latency_seconds']:.1f} s marker to staged")
    finally:
        platform.kill_leftovers()  # stop(), then whatever dev_up left running in the copy
    return rows
