"""Concurrency: several registrar processes racing for one group, and the inbox sensor evaluated
twice over the same inbox and cursor, each end with exactly one submission per group."""

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest
import sqlalchemy as sa

# Private Dagster API: no public API evaluates a sensor the way the daemon does (run-key check
# against the instance's runs, run creation, tick and cursor write). These are the helpers
# Dagster's own sensor tests use; tests/orchestrator/test_inbox_sensor.py uses them too.
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon import get_default_daemon_logger
from dagster._daemon import sensor as sensor_daemon_module
from dagster._daemon.sensor import execute_sensor_iteration

from tests.helpers import drop_files, result_of, run_worker
from tests.services import create_postgres_database, drop_postgres_database, migrate, platform_environment
from workers import layouts
from workers.db import make_engine

GROUP = "inbox/acme/unknown/race/"
RACERS = 6
SENSOR = "inbox_discovery_sensor"
OVERLAP_GROUPS = [f"inbox/acme/unknown/overlap-{i}/" for i in range(3)]


@pytest.fixture
def platform(db_url, s3_server, bucket) -> dict[str, str]:
    migrate(db_url)
    engine = make_engine(db_url)
    layouts.sync(engine, layouts.parse_definitions(layouts.packaged_definitions())[1])
    engine.dispose()
    return platform_environment(db_url, s3_server, bucket)


def test_racing_registrars_make_exactly_one_submission(platform, s3_server, ledger):
    files = {f"medical_claims_{i}.csv": os.urandom(50_000) for i in range(8)}
    drop_files(s3_server.client(), platform["MINIO_BUCKET"], GROUP, files)

    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "workers.registrar", "--grouping-key", GROUP],
            env={**os.environ, **platform},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(RACERS)
    ]
    outcomes = [racer.communicate(timeout=180) + (racer.returncode,) for racer in racers]
    ledger.update(concurrent_registrations=RACERS)

    assert [code for _, _, code in outcomes] == [0] * RACERS, [err for _, err, _ in outcomes]
    assert sum('"created": true' in out for out, _, _ in outcomes) == 1
    assert len({json.loads(out)["submission_id"] for out, _, _ in outcomes}) == 1
    engine = sa.create_engine(platform["METADATA_DB_URL"])
    with engine.connect() as conn:
        counts = [
            conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in ("submission", "submission_file")
        ]
    engine.dispose()
    assert counts == [1, len(files)]


class SensorDaemon:
    """The sensor daemon's own iteration over the orchestrator's code location (in a gRPC server
    of its own, as in `dagster dev`), on an instance set up as in Docker mode
    (images/dagster.yaml): Postgres storage and queued runs, so the runs wait in the instance
    and nothing launches them during the test."""

    def __init__(self, instance: dg.DagsterInstance, workspace):
        self.instance, self.workspace = instance, workspace
        self.log = get_default_daemon_logger("SensorDaemon")
        self.now = time.time()

    def evaluate(self, overlapping: int = 1) -> None:
        """One daemon iteration, or `overlapping` ones started together (as by daemons of their own
        sharing the instance), each reading the stored state and cursor as it finds them. Dagster's
        clock moves an hour on first, past the sensor's minimum interval since the previous tick."""
        self.now += 3600
        start = threading.Barrier(overlapping)

        def iteration() -> list:
            start.wait()
            return [error for error in execute_sensor_iteration(self.workspace, self.log, None, None) if error]

        with freeze_time(self.now), ThreadPoolExecutor(overlapping) as pool:
            errors = [error for done in [pool.submit(iteration) for _ in range(overlapping)] for error in done.result()]
        assert errors == [], [error.to_string() for error in errors]

    def state(self):
        (state,) = [state for state in self.instance.all_instigator_state() if state.name == SENSOR]
        return state

    def ticks(self, since: float) -> list:
        """The ticks evaluated after `since` (Dagster's clock), oldest first."""
        state = self.state()
        ticks = self.instance.get_ticks(state.instigator_origin_id, state.selector_id, after=since)
        return sorted(ticks, key=lambda tick: tick.tick_id)

    def runs_by_group(self) -> Counter:
        runs = self.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": SENSOR}))
        return Counter(group_config(run)["grouping_key"] for run in runs)


def group_config(run) -> dict:
    return run.run_config["ops"]["register_submission_from_group"]["config"]


@pytest.fixture
def sensor_daemon(pg_platform, tmp_path):
    """A daemon that has already ticked once over the empty inbox: the sensor's state and cursor
    exist, as on a platform that has been running."""
    dagster_db = create_postgres_database("hp_dagster")
    instance_config = {
        "storage": {"postgres": {"postgres_url": dagster_db}},
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"},
    }
    target = ModuleTarget("orchestrator.definitions", None, None, "health_intake")
    try:
        with (
            dg.instance_for_test(overrides=instance_config, temp_dir=str(tmp_path)) as instance,
            create_test_daemon_workspace_context(target, instance) as workspace,
        ):
            daemon = SensorDaemon(instance, workspace)
            daemon.evaluate()
            yield daemon
    finally:
        drop_postgres_database(dagster_db)


def drop_overlap_groups(env: dict[str, str], s3_server) -> None:
    s3 = s3_server.client()
    for group in OVERLAP_GROUPS:
        drop_files(s3, env["MINIO_BUCKET"], group, {"medical_claims.csv": b"member_id,amount\n1,2\n"})


def test_a_tick_evaluated_again_with_the_same_cursor_makes_no_second_run(sensor_daemon, pg_platform, s3_server, ledger):
    """As after a daemon restart mid-tick, before its cursor was stored: the tick's work is done
    again from the old cursor. The run keys are the same, and Dagster's check of the instance's
    runs by run key creates no second run."""
    before = sensor_daemon.state()
    since = sensor_daemon.now
    drop_overlap_groups(pg_platform, s3_server)

    sensor_daemon.evaluate()
    assert sensor_daemon.state().instigator_data.cursor != before.instigator_data.cursor
    sensor_daemon.instance.update_instigator_state(before)
    sensor_daemon.evaluate()
    ledger.update(overlapping_ticks=1)

    first, again = sensor_daemon.ticks(since)
    assert len(first.run_keys) == len(OVERLAP_GROUPS) == len(first.run_ids)
    assert sorted(again.run_keys) == sorted(first.run_keys)
    assert again.run_ids == []
    assert sensor_daemon.runs_by_group() == dict.fromkeys(OVERLAP_GROUPS, 1)


def both_read_the_state(monkeypatch, state) -> None:
    """Holds each iteration, once it has read the stored state and found the sensor due, until the
    other has too: the interleaving two daemons produce when their ticks start together (left to
    chance, the first one's mark of the tick's start sometimes comes before the second one reads)."""
    mark = sensor_daemon_module.mark_sensor_state_for_tick
    both_due = threading.Barrier(2, timeout=60)

    def mark_when_both_due(instance, remote_sensor, sensor_state, now):
        if remote_sensor.name != SENSOR:  # the intake_sweeper ticks too; only the inbox sensor races here
            return mark(instance, remote_sensor, sensor_state, now)
        assert sensor_state.instigator_data.cursor == state.instigator_data.cursor
        both_due.wait()
        mark(instance, remote_sensor, sensor_state, now)

    monkeypatch.setattr(sensor_daemon_module, "mark_sensor_state_for_tick", mark_when_both_due)


def test_two_concurrent_ticks_from_the_same_cursor_register_each_group_once(
    sensor_daemon, pg_platform, s3_server, ledger, monkeypatch
):
    """Two iterations started together from the same stored state, as two daemons sharing one
    instance would. Dagster does not de-duplicate these: its minimum-interval check and its
    run-key check are each a read followed by a write, not a lock, so both ticks evaluate and
    both create a run for the same run key (Dagster 1.13.27: 6 runs for 3 groups). What the
    platform guarantees is one submission per group: the registrar's work of every run, run
    concurrently as the queue would launch it, gives exactly that."""
    since = sensor_daemon.now
    drop_overlap_groups(pg_platform, s3_server)

    both_read_the_state(monkeypatch, sensor_daemon.state())
    sensor_daemon.evaluate(overlapping=2)
    ticks = sensor_daemon.ticks(since)
    runs = sensor_daemon.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": SENSOR}))
    by_group = sensor_daemon.runs_by_group()
    ledger.update(overlapping_ticks=len(ticks) - 1, duplicate_runs=len(runs) - len(OVERLAP_GROUPS))

    assert len(ticks) == 2
    assert [sorted(tick.run_keys) for tick in ticks] == [sorted(ticks[0].run_keys)] * 2
    assert set(by_group) == set(OVERLAP_GROUPS)
    assert all(1 <= count <= 2 for count in by_group.values()), by_group
    assert len({run.tags["dagster/run_key"] for run in runs}) == len(OVERLAP_GROUPS)

    def registrar_work(run) -> tuple[str, dict]:
        config = group_config(run)
        args = ("--grouping-key", config["grouping_key"], "--grouping-method", config["grouping_method"])
        return config["grouping_key"], result_of(run_worker(pg_platform, "registrar", *args))

    with ThreadPoolExecutor(len(runs)) as pool:
        registered = list(pool.map(registrar_work, runs))
    ledger.update(concurrent_registrations=len(runs))

    assert Counter(group for group, done in registered if done["created"]) == dict.fromkeys(OVERLAP_GROUPS, 1)
    assert len({(group, done["submission_id"]) for group, done in registered}) == len(OVERLAP_GROUPS)
    engine = sa.create_engine(pg_platform["METADATA_DB_URL"])
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT grouping_key, count(*) FROM submission GROUP BY grouping_key")).all()
    engine.dispose()
    assert dict(rows) == dict.fromkeys(OVERLAP_GROUPS, 1)
