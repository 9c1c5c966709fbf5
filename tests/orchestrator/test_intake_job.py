"""register_submission_from_group_job and sync_layout_registry, in process, with real worker processes."""

import hashlib
import re
import tempfile
import uuid
from html import unescape
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from markdown_it import MarkdownIt

from orchestrator.defs.intake.assets import sync_layout_registry
from orchestrator.defs.intake.jobs import markdown_cell, markdown_table, register_submission_from_group_job
from orchestrator.defs.resources import WorkerLauncher
from tests.helpers import SEED_YAML, drop_files
from tests.services import REPO
from workers.inbox import file_id, group_id
from workers.manifest import Manifest

SEED_RUN_CONFIG = yaml.safe_load((REPO / "examples/register_drop_001.yaml").read_text())
GROUP = "inbox/acme/unknown/drop-001/"


def run_job(run_config: dict, instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    return register_submission_from_group_job.execute_in_process(
        run_config=run_config, resources={"launcher": WorkerLauncher()}, raise_on_error=False, instance=instance
    )


def group_config(grouping_key: str) -> dict:
    config = {"grouping_key": grouping_key, "grouping_method": "MARKER_FILE"}
    return {"ops": {"register_submission_from_group": {"config": config}}}


def output_metadata(result: dg.ExecuteInProcessResult, op: str) -> dict:
    events = [e for e in result.events_for_node(op) if e.event_type_value in ("STEP_OUTPUT", "STEP_SUCCESS")]
    metadata = {}
    for event in events:
        if event.event_type_value == "STEP_OUTPUT":
            metadata.update({k: v.value for k, v in event.step_output_data.metadata.items()})
    return metadata


@pytest.mark.dagster_runs
def test_sync_layout_registry_reports_what_it_added(platform_env):
    result = dg.materialize([sync_layout_registry], resources={"launcher": WorkerLauncher()})
    (materialization,) = result.asset_materializations_for_node("sync_layout_registry")
    assert materialization.metadata["added"].value >= 5
    assert materialization.metadata["retired"].value == 0


def test_the_example_run_config_is_the_seeds_verbatim():
    assert SEED_YAML in (REPO / "examples/register_drop_001.yaml").read_text()


def test_the_launchpad_offers_the_seeds_grouping_methods():
    op_config = register_submission_from_group_job.get_config_schema_snapshot()
    enums = {
        e.given_name: [v.value for v in e.enum_values]
        for e in op_config.all_config_snaps_by_key.values()
        if e.enum_values
    }
    assert ["MARKER_FILE", "QUIESCENCE", "marker", "quiescence"] in enums.values()


@pytest.mark.dagster_runs
@pytest.mark.parametrize(
    "method, recorded",
    [
        ("MARKER_FILE", "MARKER_FILE"),
        ("QUIESCENCE", "QUIESCENCE"),
        ("marker", "MARKER_FILE"),
        ("quiescence", "QUIESCENCE"),
    ],
)
def test_the_seed_run_config_registers_and_stages_the_group(synced_layouts, s3_server, method, recorded):
    s3 = s3_server.client()
    drop_files(s3, synced_layouts.bucket, GROUP, {"medical_claims.csv": b"member,amount\n1,2\n"})
    config = yaml.safe_load(SEED_YAML)
    config["ops"]["register_submission_from_group"]["config"]["grouping_method"] = method

    result = run_job(config)

    assert result.success
    registered = output_metadata(result, "register_submission_from_group")
    assert registered["grouping_method"] == recorded and registered["file_type"] == "medical_claims"
    assert file_id(GROUP + "medical_claims.csv") in registered["file_table"]
    assert registered["group_id"] == group_id(GROUP)
    sid = registered["submission_id"]
    manifest = Manifest.from_bytes(
        s3.get_object(Bucket=synced_layouts.bucket, Key=registered["manifest_key"])["Body"].read()
    )
    for entry in manifest.files:
        body = s3.get_object(Bucket=synced_layouts.bucket, Key=entry.raw_key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry.sha256
    engine = sa.create_engine(synced_layouts.metadata_db_url)
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT status FROM submission WHERE submission_id = :s"), {"s": sid}).scalar()
            == "staged"
        )
    engine.dispose()


@pytest.mark.dagster_runs
def test_each_delivery_is_listed_in_its_submitters_partition_of_the_submissions_asset(synced_layouts, s3_server):
    s3 = s3_server.client()
    body = b"member,amount\n1,2\n"
    again, empty = "inbox/acme/unknown/drop-002/", "inbox/acme/unknown/drop-003/"
    drop_files(s3, synced_layouts.bucket, GROUP, {"medical_claims.csv": body})
    drop_files(s3, synced_layouts.bucket, again, {"medical_claims.csv": body})  # the same bytes again
    drop_files(s3, synced_layouts.bucket, empty, {})  # a marker alone
    instance = dg.DagsterInstance.ephemeral()

    first = output_metadata(run_job(group_config(GROUP), instance), "register_submission_from_group")
    second = output_metadata(run_job(group_config(again), instance), "register_submission_from_group")
    assert run_job(group_config(empty), instance).success
    assert run_job(group_config(GROUP), instance).success  # again, staged and cleaned: nothing to list

    assert instance.get_dynamic_partitions("submitters") == ["acme"]
    records = instance.fetch_materializations(dg.AssetKey("submissions"), limit=10, ascending=True).records
    shown = [
        (r.asset_materialization.partition, {k: v.value for k, v in r.asset_materialization.metadata.items()})
        for r in records
    ]
    expected = [
        (first["submission_id"], "registered"),
        (first["submission_id"], "staged"),
        (second["submission_id"], "duplicate"),
        (second["submission_id"], "duplicate"),
    ]
    assert [(m["submission_id"], m["status"]) for _, m in shown] == expected
    assert {partition for partition, _ in shown} == {"acme"}
    for _, metadata in shown:
        assert metadata["file_count"] == 1 and metadata["total_bytes"] == len(body)
        assert metadata["file_types"] == "medical_claims" and metadata["rejections"] == 0
    assert shown[2][1]["duplicate_of"] == first["submission_id"]
    (observation,) = instance.fetch_observations(dg.AssetKey("submissions"), limit=10).records
    assert observation.asset_observation.partition == "acme"
    assert observation.asset_observation.metadata["rejections"].value == 1
    assert observation.asset_observation.metadata["group_id"].value == group_id(empty)


@pytest.mark.dagster_runs
def test_the_job_twice_for_one_group_registers_once(synced_layouts, s3_server):
    drop_files(s3_server.client(), synced_layouts.bucket, GROUP, {"medical_claims.csv": b"x\n"})
    first = output_metadata(run_job(SEED_RUN_CONFIG), "register_submission_from_group")
    second = run_job(SEED_RUN_CONFIG)

    assert second.success
    engine = sa.create_engine(synced_layouts.metadata_db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM submission")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM submission_file")).scalar() == 1
    engine.dispose()
    assert first["submission_id"]


@pytest.mark.dagster_runs
def test_a_malformed_grouping_key_fails_the_run_with_the_workers_reason_naming_it_by_id(synced_layouts):
    config = {
        "ops": {
            "register_submission_from_group": {
                "config": {"grouping_key": "inbox/acme/", "grouping_method": "MARKER_FILE"}
            }
        }
    }
    result = run_job(config)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.error.message
    assert f"classifier worker failed: grouping_key of group {group_id('inbox/acme/')} is malformed" in message
    assert "inbox/acme/" not in message.split("must look like")[0]


def test_an_unknown_grouping_method_is_refused_before_the_run_starts(synced_layouts):
    config = {
        "ops": {"register_submission_from_group": {"config": {"grouping_key": GROUP, "grouping_method": "vibes"}}}
    }
    with pytest.raises(dg.DagsterInvalidConfigError, match="grouping_method.*not in enum type.*vibes"):
        run_job(config)
    engine = sa.create_engine(synced_layouts.metadata_db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM submission")).scalar() == 0
    engine.dispose()


@pytest.mark.dagster_runs
def test_raw_objects_are_never_listed_in_file_contents_metadata(synced_layouts, s3_server):
    secret = b"SENTINEL-PHI-CONTENT 123-45-6789"
    drop_files(s3_server.client(), synced_layouts.bucket, GROUP, {"medical_claims.csv": secret})
    result = run_job(SEED_RUN_CONFIG)
    assert result.success
    assert all(b"SENTINEL-PHI" not in repr(e).encode() for e in result.all_events)


def test_a_markdown_cell_keeps_pipes_backslashes_and_line_breaks_inside_it():
    assert markdown_cell("a|b\\|c\r\n") == "a\\|b\\\\\\|c\\\\r\\\\n"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("[x](http://evil.example)", "\\[x\\](http://evil.example)"),
        ("![x](http://evil.example/p.png)", "\\!\\[x\\](http://evil.example/p.png)"),
        ("<http://evil.example>", "\\<http://evil.example\\>"),
        ("<img src=x onerror=alert(1)>", "\\<img src=x onerror=alert(1)\\>"),
        ("&lt;b&gt;", "\\&lt;b\\&gt;"),
        ("*bold* _it_ `code` ~~gone~~", "\\*bold\\* \\_it\\_ \\`code\\` \\~\\~gone\\~\\~"),
    ],
)
def test_a_markdown_cell_shows_links_images_autolinks_and_html_as_text(text, shown):
    assert markdown_cell(text) == shown


def test_a_rendered_table_shows_each_cell_as_written_and_makes_no_link_image_or_html():
    """Rendered by markdown-it-py (CommonMark with GFM tables), not the Dagster UI's own renderer."""
    texts = [
        "[x](http://e.example)",
        "![i](http://e.example/p.png)",
        "<http://e.example>",
        "<b onclick=x>hi</b>",
        "a|b\\",
    ]
    html = MarkdownIt("commonmark").enable("table").render(markdown_table([{"cell": t} for t in texts]))
    assert "<a " not in html and "<img" not in html and "<b" not in html.replace("<br", "")
    cells = re.findall(r"<td>(.*?)</td>", html)
    assert [unescape(cell) for cell in cells] == texts


def inbox_observations(result: dg.ExecuteInProcessResult) -> list[dg.AssetObservation]:
    return [
        e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
        and e.event_specific_data.asset_observation.asset_key == dg.AssetKey("inbox")
    ]


@pytest.mark.dagster_runs
def test_a_marker_alone_registers_nothing_and_its_rejection_is_observed_on_the_inbox_asset(synced_layouts, s3_server):
    drop_files(s3_server.client(), synced_layouts.bucket, GROUP, {})

    result = run_job(SEED_RUN_CONFIG)

    assert result.success
    assert not output_metadata(result, "register_submission_from_group").get("submission_id")
    (observation,) = inbox_observations(result)
    assert observation.metadata["new_rejections"].value == 1
    table = observation.metadata["rejected"].value
    assert f"| {file_id(GROUP + '_SUCCESS')} | completion marker without data files | 0 |" in table
    assert GROUP not in table
    # Run again: the same marker is already on record, so nothing new is observed.
    assert inbox_observations(run_job(SEED_RUN_CONFIG)) == []


@pytest.mark.dagster_runs
def test_a_file_left_out_of_a_registered_group_is_in_the_op_metadata_and_observed(synced_layouts, s3_server):
    # Fits S3's 1,024-byte key limit in the inbox (segments under SeaweedFS's 255), not under raw/.
    too_long = GROUP + "/".join(["n" * 240] * 4) + "/" + "x" * 20 + ".csv"
    drop_files(
        s3_server.client(), synced_layouts.bucket, GROUP, {"medical_claims.csv": b"a\n", too_long[len(GROUP) :]: b"b\n"}
    )

    result = run_job(SEED_RUN_CONFIG)

    assert result.success
    registered = output_metadata(result, "register_submission_from_group")
    assert registered["file_count"] == 1 and "raw key would exceed" in registered["rejections"]
    (observation,) = inbox_observations(result)
    assert observation.metadata["new_rejections"].value == 1


@pytest.mark.dagster_runs
def test_a_receipt_the_store_refused_fails_the_step_and_its_retry_sends_it(platform_env, monkeypatch):
    """The stager's report says the receipt was refused (tests/fake_workers/stager.py stands in for
    that fault): the step fails with the receipt's id and error, and its retry runs the stager again."""
    from orchestrator.defs.intake.jobs import stage_submission_job

    sid = f"sub-{uuid.uuid4().hex[:24]}"
    runs = Path(tempfile.gettempdir()) / f"fake-stager-{sid}"
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))
    monkeypatch.setenv("WORKER_PACKAGE", "fake_workers")
    monkeypatch.setenv("INTAKE_STEP_RETRIES", "1")
    monkeypatch.setenv("INTAKE_STEP_RETRY_DELAY_SECONDS", "0")
    config = {"ops": {"stage_registered_submission": {"config": {"submission_id": sid}}}}

    instance = dg.DagsterInstance.ephemeral()
    result = stage_submission_job.execute_in_process(
        run_config=config, resources={"launcher": WorkerLauncher()}, raise_on_error=False, instance=instance
    )

    assert result.success
    assert runs.read_text().count("run") == 2
    runs.unlink()
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 1
    warnings = " ".join(record.user_message for record in instance.all_logs(result.run_id))
    assert f"receipt {sid} not written: ServiceUnavailable" in warnings
    assert output_metadata(result, "stage_registered_submission")["receipt"] == "written"
