"""Every complete drop ends staged without a human: the operator's worst night, automated.

Real `./dev_up.sh` (dagster dev with its daemon, run monitoring, run retries and intake_sweeper),
a real S3 server of the test's own (so it outlives the orchestrator, or is stopped while the
orchestrator lives), real workers held at exact points by `workers.faults` pause points.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.defs.dagster_internals import UNREACHABLE_GRACE_SECONDS
from tests.helpers import drop_files, staged_state
from tests.services import S3_KEYS, DevUpProcess, S3Server, fresh_copy, start_s3_server, stop_process_group, wait_for_s3
from workers.inbox import group_id
from workers.store import ensure_bucket

FILES = {f"claims_{n}.csv": os.urandom(2_000_000) for n in range(3)}
# Quick rounds for a test: the defaults are minutes (workers.settings.RECOVERY_DEFAULTS).
QUICK_RECOVERY = {
    "INTAKE_STEP_RETRIES": "1",
    "INTAKE_STEP_RETRY_DELAY_SECONDS": "2",
    "INTAKE_RUN_RETRIES": "1",
    "SWEEP_INTERVAL_SECONDS": "5",
    "SWEEP_ROUNDS": "2",
    "SWEEP_BACKOFF_SECONDS": "10",
    "STAGING_GRACE_MINUTES": "0.25",
    "STUCK_AFTER_MINUTES": "30",
}
CONVERGE_TIMEOUT = 420


class Platform:
    """dev_up.sh in a copy of the repository, against an S3 server this test starts and stops."""

    def __init__(self, copy: Path, work: Path, bucket: str, extra_env: dict[str, str]):
        self.copy, self.bucket, self.extra_env = copy, bucket, extra_env
        self.s3_data, self.s3_log = work / "s3", work / "s3.log"
        self.s3_proc, self.s3_port = start_s3_server(self.s3_data, self.s3_log)
        self.s3 = S3Server(f"http://127.0.0.1:{self.s3_port}", *S3_KEYS)
        wait_for_s3(self.s3, self.s3_proc, self.s3_log)
        self.flag = work / "paused"
        self.dev: DevUpProcess | None = None

    def start(self, pause_at: str | None = None) -> float:
        self.dev = DevUpProcess(self.copy, s3_port=self.s3_port)
        self.dev.env.update({"MINIO_BUCKET": self.bucket, **QUICK_RECOVERY, **self.extra_env})
        if pause_at:
            self.dev.env.update({"WORKER_PAUSE_AT": pause_at, "WORKER_PAUSE_FLAG": str(self.flag)})
        return self.dev.start()

    def wait_until_paused(self, timeout: float = 240) -> int:
        deadline = time.monotonic() + timeout
        while not (self.flag.exists() and self.flag.read_text()):
            assert time.monotonic() < deadline, f"no worker reached the pause point: {self.dev.log.read_text()[-2000:]}"
            time.sleep(0.5)
        return int(self.flag.read_text())

    def release(self) -> None:
        self.flag.with_name(self.flag.name + ".released").touch()

    def power_loss(self) -> None:
        """SIGKILL dev_up.sh, dagster dev and every process of theirs (all run in the copy), as a power
        loss would: no handler runs. The S3 server (outside the copy) keeps running."""
        for proc in Path("/proc").iterdir():
            try:
                inside = proc.name.isdigit() and Path(os.readlink(proc / "cwd")).is_relative_to(self.copy)
            except OSError:
                continue
            if inside and int(proc.name) != os.getpid():
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.dev.proc.wait(timeout=30)

    def stop_s3(self) -> None:
        stop_process_group(self.s3_proc)

    def start_s3(self) -> None:
        self.s3_proc = start_s3_server(self.s3_data, self.s3_log, port=self.s3_port)[0]
        wait_for_s3(self.s3, self.s3_proc, self.s3_log)

    def env(self) -> dict[str, str]:
        return {"METADATA_DB_URL": f"sqlite:///{self.copy}/.local/metadata.db", "MINIO_BUCKET": self.bucket}

    def runs(self, group: str) -> list[dict]:
        query = (
            '{ runsOrError(filter: {tags: [{key: "health-intake/group", value: "GROUP"}]}) '
            "{ ... on Runs { results { runId status jobName tags { key value } } } } }"
        ).replace("GROUP", group_id(group))
        return self.dev.graphql(query)["runsOrError"]["results"]

    def recovery_rows(self) -> list[dict]:
        engine = sa.create_engine(self.env()["METADATA_DB_URL"])
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM drop_recovery"))]
        engine.dispose()
        return rows

    def wait_for(self, what, group: str, timeout: float = CONVERGE_TIMEOUT, every: float = 3):
        began, deadline = time.monotonic(), time.monotonic() + timeout
        while True:
            found = what()
            if found:
                return time.monotonic() - began
            assert time.monotonic() < deadline, f"not within {timeout} s: {self.diagnosis(group)}"
            time.sleep(every)

    def diagnosis(self, group: str) -> str:
        """The group's runs and the daemon's recovery lines: what a failure message needs."""
        runs = [
            (r["runId"][:8], r["jobName"], r["status"], {t["key"]: t["value"] for t in r["tags"] if "retr" in t["key"]})
            for r in self.runs(group)
        ]
        daemon = (self.copy / ".local" / "dagster.log").read_text(errors="replace").splitlines()
        wanted = ("Detected run worker", "asking again", "ERROR", "Error")
        return (
            f"runs: {runs}\nrows: {self.recovery_rows()}\n"
            + "\n".join(line[-300:] for line in daemon if any(w in line for w in wanted))[-4000:]
        )

    def converged(self, group: str, files: dict[str, bytes] = FILES) -> bool:
        engine = sa.create_engine(self.env()["METADATA_DB_URL"])
        with engine.connect() as conn:
            statuses = conn.execute(sa.text("SELECT status FROM submission WHERE grouping_key = :g"), {"g": group})
            staged = [status for (status,) in statuses] == ["staged"]
        engine.dispose()
        if not staged:
            return False  # the whole check (below) reads manifests, which need not exist before this
        state = staged_state(self.env(), self.s3.client(), group, files)
        return state["staged_submissions"] == 1 and state["inbox_left"] == 0 and state["files_lost"] == 0

    def close(self) -> None:
        if self.dev is not None:
            self.dev.kill_leftovers()
        self.stop_s3()


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    return fresh_copy(tmp_path_factory.mktemp("convergence") / "copy")


@pytest.fixture
def platform(copy, tmp_path, request):
    extra = getattr(request, "param", {})
    for state in (".dagster_home", ".local"):  # each scenario its own runs and metadata DB
        shutil.rmtree(copy / state, ignore_errors=True)
    made = Platform(copy, tmp_path, f"conv-{tmp_path.name[-12:].lower().replace('_', '-')}", extra)
    ensure_bucket(made.s3.client(), made.bucket)
    yield made
    made.close()


def gone(pid: int, timeout: float = 10) -> bool:
    """True once the process has exited (a zombie waiting for its reaper counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.2)
    return False


def assert_exactly_once(platform: Platform, group: str, ledger) -> None:
    state = staged_state(platform.env(), platform.s3.client(), group, FILES)
    ledger.update(files_checked=state["files_checked"], files_lost=state["files_lost"])
    ledger.update(files_duplicated=state["files_duplicated"])
    wrong = state["raw_unrecorded"] + state["raw_unprotected"] + state["raw_extra_versions"]
    ledger.update(raw_versions_checked=state["raw_versions_checked"], raw_versions_wrong=wrong)
    ledger.update(inbox_versions_left=state["inbox_versions_left"])
    assert (state["submissions"], state["staged_submissions"]) == (1, 1), state
    assert (state["files_lost"], state["files_duplicated"]) == (0, 0), state
    assert state["manifests_ok"], state
    assert (state["inbox_left"], state["inbox_rows_unremoved"]) == (0, 0), state
    assert (wrong, state["inbox_versions_left"]) == (0, 0), state


@pytest.mark.parametrize("point", ["classifier.classified:1", "registrar.committed:1", "stager.copied:2"])
def test_a_drop_converges_after_the_whole_orchestrator_is_killed_mid_run(platform, point, ledger):
    group = f"inbox/acme/unknown/killed-{point.split('.')[0]}/"
    platform.start(pause_at=point)
    drop_files(platform.s3.client(), platform.bucket, group, FILES)
    worker = platform.wait_until_paused()
    (interrupted,) = [r for r in platform.runs(group) if r["status"] == "STARTED"]

    platform.power_loss()
    assert gone(worker), "the paused worker outlived the power loss"
    platform.start()  # as after a power loss: no pause point, nothing else done by hand
    seconds = platform.wait_for(lambda: platform.converged(group), group)

    assert_exactly_once(platform, group, ledger)
    platform.wait_for(lambda: any(r["status"] == "SUCCESS" for r in platform.runs(group)), group, timeout=120)
    runs = {r["runId"]: r for r in platform.runs(group)}
    assert runs[interrupted["runId"]]["status"] == "FAILURE", "the interrupted run is not marked failed"
    print(platform.diagnosis(group))
    ledger.update(orchestrator_kills_converged=1)
    ledger.convergence.append((f"orchestrator killed at {point}", seconds))


def test_a_run_that_outlasts_run_monitoring_s_grace_is_not_taken_for_lost(platform, ledger):
    """A worker held past UNREACHABLE_GRACE_SECONDS and two monitoring polls. dagster dev's proxy
    code server answers GetCurrentRuns UNIMPLEMENTED: before MonitoredRunLauncher asked
    CanCancelExecution instead, that was taken for an unreachable server and every run older than
    ~45 s was failed while it ran, and run again beside itself (found by issue 15's batch runs)."""
    group = "inbox/acme/unknown/long-run/"
    platform.start(pause_at="stager.copied:1")
    drop_files(platform.s3.client(), platform.bucket, group, FILES)
    platform.wait_until_paused()
    time.sleep(UNREACHABLE_GRACE_SECONDS + 2 * 15 + 10)  # run_monitoring.poll_interval_seconds: 15
    (running,) = platform.runs(group)
    assert running["status"] == "STARTED", platform.diagnosis(group)

    platform.release()
    platform.wait_for(lambda: platform.converged(group), group)
    platform.wait_for(lambda: platform.runs(group)[0]["status"] == "SUCCESS", group, timeout=120)

    assert_exactly_once(platform, group, ledger)
    assert [r["status"] for r in platform.runs(group)] == ["SUCCESS"], platform.diagnosis(group)


# The sweeper's rounds (45 s, then 90 s later) outlast the outage; the step and run retries do not.
@pytest.mark.parametrize("platform", [{"SWEEP_ROUNDS": "3", "SWEEP_BACKOFF_SECONDS": "45"}], indirect=True)
def test_a_drop_converges_after_the_object_store_is_down_longer_than_every_retry(platform, ledger):
    group = "inbox/acme/unknown/s3-outage/"
    platform.start(pause_at="stager.copied:1")
    drop_files(platform.s3.client(), platform.bucket, group, FILES)
    platform.wait_until_paused()
    platform.stop_s3()
    platform.release()  # the stager goes on into a dead server; step and run retries fail too
    platform.wait_for(lambda: any(r["status"] == "FAILURE" for r in platform.runs(group)), group, timeout=240)
    time.sleep(60)  # down for longer than the step retries (2 s, x2) and the run retry take
    platform.start_s3()
    back = time.monotonic()
    platform.wait_for(lambda: platform.converged(group), group)

    assert_exactly_once(platform, group, ledger)
    assert len(platform.runs(group)) >= 3, "the drop converged without the retries this test is about"
    ledger.update(outages_converged=1)
    ledger.convergence.append(("object store down during staging, then back", time.monotonic() - back))


def test_a_poison_drop_stops_at_the_limit_needs_attention_and_others_keep_flowing(platform, ledger):
    poison, good = "inbox/acme/unknown/poison/", "inbox/acme/unknown/after-poison/"
    platform.start(pause_at="registrar.committed:1")
    drop_files(platform.s3.client(), platform.bucket, poison, FILES)
    platform.wait_until_paused()
    # Squat one of its raw keys with other bytes: the stager is refused on every attempt, for real.
    engine = sa.create_engine(platform.env()["METADATA_DB_URL"])
    with engine.connect() as conn:
        raw_key = conn.execute(
            sa.text(
                "SELECT f.raw_key FROM submission_file f JOIN submission s ON s.submission_id = f.submission_id "
                "WHERE s.grouping_key = :g ORDER BY f.raw_key LIMIT 1"
            ),
            {"g": poison},
        ).scalar_one()
    engine.dispose()
    platform.s3.client().put_object(Bucket=platform.bucket, Key=raw_key, Body=b"somebody else's bytes")
    platform.release()
    # Other bytes: the same bytes from the same submitter would be registered as a duplicate of it.
    others = {name: os.urandom(len(body)) for name, body in FILES.items()}
    drop_files(platform.s3.client(), platform.bucket, good, others)

    platform.wait_for(lambda: platform.converged(good, others), good)
    platform.wait_for(lambda: any(r["state"] == "needs_attention" for r in platform.recovery_rows()), poison)
    (row,) = platform.recovery_rows()
    assert (row["kind"], row["group_id"], row["rounds"]) == ("staging", group_id(poison), 2)
    assert "already exists with different bytes" in row["last_error"], row
    runs_at_limit = len(platform.runs(poison))
    time.sleep(30)  # several sweeper ticks: no further run for the poison drop
    assert len(platform.runs(poison)) == runs_at_limit
    # Shown in the UI: the no_stuck_drops check of the inbox asset failed, naming the group.
    check = platform.dev.graphql(
        '{ assetNodes(assetKeys: [{path: ["inbox"]}]) { assetChecksOrError { ... on AssetChecks { checks { '
        "name executionForLatestMaterialization { evaluation { success } } } } } } }"
    )
    ledger.update(poison_drops_held=1)
    assert check, "the inbox asset has no checks"
