"""register_submissions_from_groups_job and the sensor's batching (orchestrator.defs.intake.batches),
in process, with real worker processes, the suite's SeaweedFS and a migrated metadata DB."""

import random
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestrator.defs.intake import batches, sweeper
from orchestrator.defs.intake.jobs import (
    DONE_TAG,
    DROP_TAG,
    GROUP_TAG,
    SWEEP_TAG,
    per_group,
    register_submission_from_group_job,
    register_submissions_from_groups_job,
    stage_submission_job,
)
from orchestrator.defs.resources import WorkerLauncher
from tests.helpers import drop_files
from workers.db import make_engine
from workers.discovery import CompleteGroup
from workers.inbox import Group, group_id
from workers.settings import load_recovery_settings


def complete(grouping_key: str, content: str = "v1", method: str = "MARKER_FILE") -> CompleteGroup:
    submitter, file_type = grouping_key.split("/")[1:3]
    return CompleteGroup(Group(grouping_key, submitter, file_type), method, content * 8, 1)  # type: ignore[arg-type]


def keys(count: int, submitter: str = "acme") -> list[str]:
    return [f"inbox/{submitter}/unknown/drop-{i:03d}/" for i in range(count)]


def batch_config(grouping_keys: list[str]) -> dict:
    groups = [{"grouping_key": key, "grouping_method": "MARKER_FILE"} for key in grouping_keys]
    return {"ops": {"register_submissions_from_groups": {"config": {"groups": groups}}}}


def run_batch(run_config: dict, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return register_submissions_from_groups_job.execute_in_process(
        run_config=run_config, resources={"launcher": WorkerLauncher()}, raise_on_error=False, instance=instance
    )


def submissions(db_url: str) -> dict[str, tuple[str, str]]:
    """grouping key -> (submission id, status)."""
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT grouping_key, submission_id, status FROM submission")).all()
    engine.dispose()
    return {key: (sid, status) for key, sid, status in rows}


def materializations(instance: dg.DagsterInstance) -> list[dict]:
    records = instance.fetch_materializations(dg.AssetKey("submissions"), limit=100, ascending=True).records
    return [{k: v.value for k, v in r.asset_materialization.metadata.items()} for r in records]


# --- the sensor's requests ---------------------------------------------------------------------


def test_no_complete_group_asks_for_no_run():
    assert batches.run_requests([]) == []


@pytest.fixture
def batch_runs(monkeypatch):
    monkeypatch.setattr(batches, "BATCH_RUNS", True)


def test_while_batch_runs_are_off_each_complete_group_gets_its_own_run():
    completes = [complete(key) for key in keys(3)]

    requests = batches.run_requests(completes)

    assert [r.job_name for r in requests] == ["register_submission_from_group_job"] * 3
    assert [r.run_key for r in requests] == [c.run_key for c in completes]


def test_a_lone_complete_group_gets_the_single_group_job_as_before():
    (request,) = batches.run_requests([complete("inbox/acme/unknown/drop-001/")])

    assert request.job_name == "register_submission_from_group_job"
    assert request.run_key == complete("inbox/acme/unknown/drop-001/").run_key
    assert request.run_config == {
        "ops": {
            "register_submission_from_group": {
                "config": {"grouping_key": "inbox/acme/unknown/drop-001/", "grouping_method": "MARKER_FILE"}
            }
        }
    }
    assert request.tags == {
        "health-intake/submitter": "acme",
        GROUP_TAG: group_id("inbox/acme/unknown/drop-001/"),
        DROP_TAG: request.run_key.replace("@", "_"),
        "health-intake/grouping-method": "MARKER_FILE",
    }


def test_many_complete_groups_are_batched_evenly_each_group_in_exactly_one_run(batch_runs):
    completes = [complete(key) for key in keys(60)]

    requests = batches.run_requests(completes)

    assert [r.job_name for r in requests] == ["register_submissions_from_groups_job"] * 3
    groups = [g for r in requests for g in r.run_config["ops"]["register_submissions_from_groups"]["config"]["groups"]]
    assert [g["grouping_key"] for g in groups] == keys(60)
    sizes = [len(r.run_config["ops"]["register_submissions_from_groups"]["config"]["groups"]) for r in requests]
    assert sizes == [20, 20, 20]
    assert len({r.run_key for r in requests}) == 3


def test_a_batch_run_is_tagged_with_each_group_id_and_drop_never_a_key(batch_runs):
    completes = [complete(key) for key in keys(3)]

    (request,) = batches.run_requests(completes)

    for c in completes:
        assert request.tags[f"{DROP_TAG}.{group_id(c.group.grouping_key)}"] == c.run_key.replace("@", "_")
    assert request.tags["health-intake/submitter"] == "acme"
    assert request.tags[batches.BATCH_TAG] == request.run_key
    assert not any("inbox/" in f"{k}{v}" for k, v in request.tags.items())
    assert "inbox/" not in request.run_key


def test_a_batch_of_several_submitters_names_none_of_them(batch_runs):
    (request,) = batches.run_requests([complete(k) for k in keys(2, "acme") + keys(2, "beta")])

    assert "health-intake/submitter" not in request.tags


def test_the_same_drops_in_any_order_get_the_same_batch_run_key_and_new_content_a_new_one(batch_runs):
    completes = [complete(key) for key in keys(5)]
    shuffled = random.sample(completes, len(completes))

    (first,) = batches.run_requests(completes)
    (again,) = batches.run_requests(shuffled)
    (changed,) = batches.run_requests([*completes[:4], complete(completes[4].group.grouping_key, "v2")])

    assert first.run_key == again.run_key != changed.run_key


def test_the_sensor_in_the_definitions_may_ask_for_either_registration_job():
    from orchestrator.definitions import defs

    sensor = defs.resolve_sensor_def("inbox_discovery_sensor")
    assert {t.job_name for t in sensor.targets} == {
        "register_submission_from_group_job",
        "register_submissions_from_groups_job",
    }


def test_the_intake_jobs_run_their_steps_in_the_run_process():
    for job in (register_submission_from_group_job, register_submissions_from_groups_job, stage_submission_job):
        assert job.executor_def is dg.in_process_executor


# --- the batch job -----------------------------------------------------------------------------


@pytest.mark.dagster_runs
def test_a_batch_run_registers_and_stages_each_group_as_its_own_submission(synced_layouts, s3_server):
    grouping_keys = keys(3)
    for i, key in enumerate(grouping_keys):
        drop_files(s3_server.client(), synced_layouts.bucket, key, {"medical_claims.csv": f"m,a\n{i},2\n".encode()})
    instance = dg.DagsterInstance.ephemeral()

    result = run_batch(batch_config(grouping_keys), instance)

    assert result.success
    registered = submissions(synced_layouts.metadata_db_url)
    assert sorted(registered) == grouping_keys
    assert {status for _, status in registered.values()} == {"staged"}
    assert len({sid for sid, _ in registered.values()}) == 3
    shown = materializations(instance)
    for key, (sid, _) in registered.items():
        assert [m["status"] for m in shown if m["submission_id"] == sid] == ["registered", "staged"]
        assert [m["group_id"] for m in shown if m["submission_id"] == sid and m["status"] == "registered"] == [
            group_id(key)
        ]
    outcomes = step_metadata(result)
    assert outcomes["groups"] == 3 and outcomes["failed"] == 0
    for key in grouping_keys:
        assert group_id(key) in outcomes["outcomes"] and key not in outcomes["outcomes"]


def step_metadata(result: dg.ExecuteInProcessResult) -> dict:
    metadata = {}
    for event in result.events_for_node("register_submissions_from_groups"):
        if event.event_type_value == "STEP_OUTPUT":
            metadata.update({k: v.value for k, v in event.step_output_data.metadata.items()})
    return metadata


@pytest.mark.dagster_runs
def test_a_bad_group_does_not_stop_the_others_and_fails_the_run_naming_it_by_id(synced_layouts, s3_server, monkeypatch):
    monkeypatch.setenv("INTAKE_STEP_RETRIES", "1")
    monkeypatch.setenv("INTAKE_STEP_RETRY_DELAY_SECONDS", "0")
    good = keys(2)
    bad = "inbox/acme/"  # malformed: the classifier refuses it
    for i, key in enumerate(good):
        drop_files(s3_server.client(), synced_layouts.bucket, key, {"medical_claims.csv": f"m,a\n{i},3\n".encode()})
    instance = dg.DagsterInstance.ephemeral()

    result = run_batch(batch_config([good[0], bad, good[1]]), instance)

    assert not result.success
    assert {key: status for key, (_, status) in submissions(synced_layouts.metadata_db_url).items()} == {
        good[0]: "staged",
        good[1]: "staged",
    }
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("1 of 3 group(s) failed: ")
    assert f"group {group_id(bad)}: classifier worker failed" in message
    assert bad not in message.split("must look like")[0]
    warnings = [r.user_message for r in instance.all_logs(result.run_id) if "again in" in r.user_message]
    assert warnings == ["1 group(s) again in 0 s (retry 1 of 1)"]
    assert len(materializations(instance)) == 4  # each good group registered and staged


@pytest.mark.dagster_runs
def test_the_same_groups_again_in_another_batch_register_nothing_twice(synced_layouts, s3_server):
    """A lost cursor can bring groups back in another composition: a new batch run key, the same content."""
    grouping_keys = keys(3)
    for i, key in enumerate(grouping_keys):
        drop_files(s3_server.client(), synced_layouts.bucket, key, {"medical_claims.csv": f"m,a\n{i},4\n".encode()})
    instance = dg.DagsterInstance.ephemeral()
    assert run_batch(batch_config(grouping_keys[:2]), instance).success
    first = submissions(synced_layouts.metadata_db_url)

    again = run_batch(batch_config(grouping_keys[::-1]), instance)

    assert again.success
    after = submissions(synced_layouts.metadata_db_url)
    assert len(after) == 3 and {k: after[k] for k in first} == first
    assert {status for _, status in after.values()} == {"staged"}


def test_each_drop_of_a_batch_run_can_be_asked_for_again_alone(batch_runs):
    """What the sweeper needs of a failed batch run: its drops, and one drop's single-group run."""
    completes = [complete(key) for key in keys(3)]
    (request,) = batches.run_requests(completes)
    (alone,) = batches.run_requests(completes[1:2])

    drops = batches.drops_of(request.tags)
    run_config, tags = batches.single_group_run(request.tags, request.run_config, group_id(keys(3)[1]))

    assert drops == {c.run_key.replace("@", "_"): group_id(c.group.grouping_key) for c in completes}
    assert batches.drops_of(alone.tags) == {alone.tags[DROP_TAG]: alone.tags[GROUP_TAG]}
    assert (run_config, tags) == (alone.run_config, alone.tags)


@pytest.mark.dagster_runs
def test_the_sweeper_asks_again_for_the_failed_group_of_a_batch_run_alone_and_not_for_the_others(
    synced_layouts, s3_server, monkeypatch
):
    """A batch run that failed on one group: intake_sweeper asks for that group's drop with the
    single-group job, as the sensor would have asked for it alone; the groups the run ended well
    (tagged done as each ended) have converged."""
    monkeypatch.setenv("INTAKE_STEP_RETRIES", "0")
    good = keys(2)
    bad = "inbox/acme/unknown/"  # a group key without a drop: the classifier refuses it
    for i, key in enumerate(good):
        drop_files(s3_server.client(), synced_layouts.bucket, key, {"medical_claims.csv": f"m,a\n{i},5\n".encode()})
    completes = [complete(good[0]), complete(bad), complete(good[1])]
    request = batches.batch_request(completes)
    instance = dg.DagsterInstance.ephemeral()
    result = register_submissions_from_groups_job.execute_in_process(
        run_config=request.run_config,
        tags=request.tags,
        resources={"launcher": WorkerLauncher()},
        raise_on_error=False,
        instance=instance,
    )
    assert not result.success
    tags = instance.get_run_by_id(result.run_id).tags
    assert {k for k in tags if k.startswith(DONE_TAG)} == {per_group(DONE_TAG, group_id(k)) for k in good}

    engine = make_engine(synced_layouts.metadata_db_url)
    later = datetime.now(UTC) + timedelta(hours=1)  # past Dagster's retry window and the first back-off
    verdicts = sweeper.sweep(instance, engine, later, load_recovery_settings())
    engine.dispose()

    by_drop = {v.recovery.subject: v for v in verdicts}
    drop = {key: c.run_key.replace("@", "_") for key, c in zip([good[0], bad, good[1]], completes, strict=True)}
    assert by_drop.keys() == set(drop.values())
    assert [by_drop[drop[k]].recovery.state for k in good] == ["converged", "converged"]
    assert [by_drop[drop[k]].ask for k in good] == [None, None]
    ask = by_drop[drop[bad]].ask
    alone = batches.single_request(completes[1])
    assert (ask.job, ask.run_key) == (register_submission_from_group_job.name, f"{drop[bad]}~sweep-1")
    assert ask.run_config == alone.run_config
    assert ask.tags == {**alone.tags, SWEEP_TAG: "1"}
    assert by_drop[drop[bad]].recovery.group_id == group_id(bad)
    assert f"group {group_id(bad)}: classifier worker failed" in by_drop[drop[bad]].recovery.last_error
