"""intake_sweeper's decisions (pure) and its tick against a real instance and metadata DB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestrator.definitions import defs
from orchestrator.defs.intake import assets, batches, checks, jobs
from orchestrator.defs.intake.sweeper import (
    CHECK_NAME,
    RunInfo,
    intake_sweeper,
    last_error,
    registration_verdict,
    run_infos,
    seen_by,
    staging_verdict,
)
from orchestrator.defs.resources import WorkerLauncher
from workers.db import Submission, make_engine
from workers.discovery import CompleteGroup
from workers.inbox import Group, group_id
from workers.recovery import Unstaged, stuck_drops
from workers.settings import load_recovery_settings

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SETTINGS = load_recovery_settings({"SWEEP_ROUNDS": "2", "SWEEP_BACKOFF_SECONDS": "60", "STAGING_GRACE_MINUTES": "10"})
GROUP = "inbox/acme/unknown/drop-001/"
DROP = f"{group_id(GROUP)}_0123456789abcdef"
CONFIG = {
    "ops": {"register_submission_from_group": {"config": {"grouping_key": GROUP, "grouping_method": "MARKER_FILE"}}}
}


def run(status: str, minutes_ago: float, sweep: int = 0, run_id: str = "r", **tags: str) -> RunInfo:
    created = NOW - timedelta(minutes=minutes_ago)
    all_tags = {jobs.GROUP_TAG: group_id(GROUP), jobs.DROP_TAG: DROP, **tags}
    if sweep:
        all_tags[jobs.SWEEP_TAG] = str(sweep)
    ended = created + timedelta(seconds=30) if status in ("SUCCESS", "FAILURE", "CANCELED") else None
    return RunInfo(run_id, jobs.register_submission_from_group_job.name, status, created, ended, all_tags, CONFIG)


def test_a_failed_drop_with_no_retry_left_is_asked_for_again_with_a_run_key_naming_the_round():
    failed = run("FAILURE", 5)
    verdict = registration_verdict(DROP, [failed], [failed], NOW, SETTINGS, "stager worker failed: boom")
    assert verdict.ask.run_key == f"{DROP}~sweep-1"
    assert verdict.ask.run_config == CONFIG
    assert verdict.ask.tags[jobs.DROP_TAG] == DROP and verdict.ask.tags[jobs.SWEEP_TAG] == "1"
    assert (verdict.recovery.state, verdict.recovery.rounds) == ("retrying", 1)
    assert verdict.recovery.last_error == "stager worker failed: boom"


def test_the_next_round_waits_out_a_doubling_back_off():
    second = run("FAILURE", 1.5, sweep=1)  # ended 60 s ago; round 2 is due 120 s after it
    verdict = registration_verdict(DROP, [run("FAILURE", 20), second], [], NOW, SETTINGS)
    assert verdict.ask is None and verdict.recovery.state == "retrying"
    assert verdict.recovery.next_attempt_at == second.ended + timedelta(seconds=120)
    later = registration_verdict(DROP, [run("FAILURE", 20), second], [], NOW + timedelta(seconds=61), SETTINGS)
    assert later.ask.run_key == f"{DROP}~sweep-2"


def test_after_the_last_round_the_drop_needs_attention_and_nothing_is_asked():
    runs = [run("FAILURE", 30), run("FAILURE", 20, sweep=1), run("FAILURE", 10, sweep=2)]
    verdict = registration_verdict(DROP, runs, runs, NOW, SETTINGS, "the reason")
    assert verdict.ask is None
    assert (verdict.recovery.state, verdict.recovery.rounds, verdict.recovery.last_error) == (
        "needs_attention",
        2,
        "the reason",
    )


@pytest.mark.parametrize(
    "runs, group_runs",
    [
        ([run("FAILURE", 10), run("STARTED", 1)], []),  # Dagster's retry is going
        ([run("FAILURE", 10)], [run("QUEUED", 1, run_id="other")]),  # another run of the group is
        ([run("FAILURE", 1, **{"dagster/will_retry": "true"})], []),  # Dagster is about to retry it
    ],
)
def test_nothing_is_asked_while_a_run_of_the_group_goes_or_dagster_will_retry(runs, group_runs):
    assert registration_verdict(DROP, runs, group_runs, NOW, SETTINGS) is None


def test_a_later_success_of_the_drop_or_of_its_group_is_convergence():
    failed = run("FAILURE", 10)
    assert registration_verdict(DROP, [failed, run("SUCCESS", 5)], [], NOW, SETTINGS).recovery.state == "converged"
    newer = run("SUCCESS", 5, run_id="newer-content", **{jobs.DROP_TAG: "g-x_other"})
    assert registration_verdict(DROP, [failed], [failed, newer], NOW, SETTINGS).recovery.state == "converged"


def test_a_registered_submission_gets_a_staging_run_after_the_grace_and_rounds_like_a_drop():
    unstaged = Unstaged("sub-1", group_id(GROUP), NOW - timedelta(minutes=11))
    first = staging_verdict(unstaged, [], [], NOW, SETTINGS)
    assert first.ask.job == "stage_submission_job" and first.ask.run_key == "sub-1~stage-1"
    assert first.ask.run_config == {"ops": {"stage_registered_submission": {"config": {"submission_id": "sub-1"}}}}
    assert first.ask.tags == {jobs.GROUP_TAG: group_id(GROUP), jobs.SUBMISSION_TAG: "sub-1", jobs.SWEEP_TAG: "1"}
    young = Unstaged("sub-1", group_id(GROUP), NOW - timedelta(minutes=5))
    assert staging_verdict(young, [], [], NOW, SETTINGS).ask is None
    spent = [run("FAILURE", 9, sweep=1), run("FAILURE", 3, sweep=2)]
    assert staging_verdict(unstaged, spent, [], NOW, SETTINGS).recovery.state == "needs_attention"
    assert staging_verdict(unstaged, [], [run("STARTED", 1)], NOW, SETTINGS) is None


@pytest.fixture
def instance():
    with dg.instance_for_test() as made:
        yield made


def test_a_tick_stages_an_unstaged_submission_records_it_and_fails_the_check(platform_env, instance, monkeypatch):
    monkeypatch.setenv("STAGING_GRACE_MINUTES", "0")
    engine = make_engine(platform_env.metadata_db_url)
    add_unstaged_submission(engine, "sub-unstaged", registered_ago=timedelta(hours=2))
    context = dg.build_sensor_context(instance=instance, definitions=defs)
    result = intake_sweeper.evaluate_tick(context)

    (request,) = result.run_requests
    assert request.job_name == "stage_submission_job" and request.run_key == "sub-unstaged~stage-1"
    rows = engine.connect().execute(sa.text("SELECT subject, kind, state, rounds FROM drop_recovery")).all()
    assert [tuple(r) for r in rows] == [("sub-unstaged", "staging", "retrying", 1)]
    (evaluation,) = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert evaluation.check_name == CHECK_NAME and not evaluation.passed  # registered 2 h ago: past 60 min
    assert "sub-unstaged" in str(evaluation.metadata["stuck"].value) and GROUP not in str(evaluation.metadata)
    assert [s.subject for s in stuck_drops(engine, datetime.now(UTC), timedelta(minutes=60))] == ["sub-unstaged"]

    again = intake_sweeper.evaluate_tick(
        dg.build_sensor_context(instance=instance, definitions=defs, cursor=result.cursor)
    )
    assert not [e for e in again.asset_events if isinstance(e, dg.AssetCheckEvaluation)], "unchanged: not re-recorded"
    engine.dispose()


def test_a_tick_with_the_metadata_db_down_asks_for_nothing_and_keeps_its_cursor(platform_env, instance, monkeypatch):
    monkeypatch.setenv("METADATA_DB_URL", "postgresql+psycopg2://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("DB_CONNECT_ATTEMPTS", "1")
    result = intake_sweeper.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs, cursor="abc"))
    assert not result.run_requests and result.cursor == "abc"
    assert "metadata database unavailable" in result.skip_message


@pytest.mark.dagster_runs
def test_the_last_error_is_the_failing_workers_own_line_naming_the_group_by_id(synced_layouts, instance):
    config = {
        "ops": {
            "register_submission_from_group": {
                "config": {"grouping_key": "inbox/acme/", "grouping_method": "MARKER_FILE"}
            }
        }
    }
    job = defs.resolve_job_def("register_submission_from_group_job")
    result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
    assert not result.success
    (failed,) = run_infos(instance.get_run_records())

    error = last_error(instance, [failed])
    assert error.startswith(f"run {failed.run_id[:8]}: classifier worker failed: grouping_key of group g-")
    assert "inbox/acme/" not in error.split("must look like")[0]


def add_unstaged_submission(engine, submission_id: str, registered_ago: timedelta) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Submission).values(
                submission_id=submission_id,
                submitter_id="acme",
                file_type="unknown",
                grouping_key=GROUP,
                grouping_method="MARKER_FILE",
                content_hash=submission_id.ljust(64, "c"),
                raw_prefix=f"raw/acme/unknown/{submission_id}/",
                manifest_key=f"raw/acme/unknown/{submission_id}/_manifest.json",
                file_count=1,
                total_bytes=1,
                status="registered",
                created_at=datetime.now(UTC) - registered_ago,
            )
        )


def run_stuck_check() -> dg.AssetCheckEvaluation:
    """no_stuck_drops as an operator runs it from the UI: a run of the check, a real audit worker."""
    check_defs = dg.Definitions(
        assets=[assets.inbox],
        asset_checks=[checks.no_stuck_drops],
        jobs=[dg.define_asset_job("check_stuck", selection=dg.AssetSelection.checks(checks.no_stuck_drops))],
        resources={"launcher": WorkerLauncher()},
    )
    (evaluation,) = check_defs.resolve_job_def("check_stuck").execute_in_process().get_asset_check_evaluations()
    return evaluation


@pytest.mark.dagster_runs
def test_the_check_run_from_the_ui_passes_with_nothing_stuck_and_fails_naming_a_stuck_drop_by_id(platform_env):
    engine = make_engine(platform_env.metadata_db_url)
    add_unstaged_submission(engine, "sub-recent", registered_ago=timedelta(minutes=5))
    assert run_stuck_check().passed, "registered 5 min ago is not past STUCK_AFTER_MINUTES (60)"

    add_unstaged_submission(engine, "sub-old", registered_ago=timedelta(hours=3))
    evaluation = run_stuck_check()
    engine.dispose()
    assert not evaluation.passed
    assert evaluation.metadata["stuck_drops"].value == 1
    shown = str(evaluation.metadata["stuck"].value)
    assert "sub-old" in shown and group_id(GROUP) in shown and GROUP not in shown


def batch_run(status: str, minutes_ago: float, *done: str) -> RunInfo:
    """A batch run of GROUP and another group, as the sensor asks for it, with `done` groups tagged."""
    groups = [GROUP, "inbox/acme/unknown/drop-002/"]
    completes = [CompleteGroup(Group(key, "acme", "unknown"), "MARKER_FILE", "0123456789abcdef", 1) for key in groups]
    request = batches.batch_request(completes)
    tags = {**request.tags, **{jobs.per_group(jobs.DONE_TAG, group_id(key)): "true" for key in done}}
    created = NOW - timedelta(minutes=minutes_ago)
    ended = created + timedelta(seconds=30) if status in ("SUCCESS", "FAILURE", "CANCELED") else None
    job = jobs.register_submissions_from_groups_job.name
    return RunInfo("b", job, status, created, ended, tags, request.run_config)


def test_a_batch_run_counts_for_each_of_its_drops_as_that_drops_own_run():
    alone = seen_by(batch_run("FAILURE", 5), group_id(GROUP))
    assert alone.tags[jobs.DROP_TAG] == DROP and alone.run_config == CONFIG and alone.status == "FAILURE"
    assert registration_verdict(DROP, [alone], [alone], NOW, SETTINGS).ask.run_config == CONFIG

    done_here = seen_by(batch_run("FAILURE", 5, GROUP), group_id(GROUP))
    assert registration_verdict(DROP, [done_here], [], NOW, SETTINGS).recovery.state == "converged"

    going = seen_by(batch_run("STARTED", 1), group_id(GROUP))
    assert registration_verdict(DROP, [run("FAILURE", 10)], [going], NOW, SETTINGS) is None
