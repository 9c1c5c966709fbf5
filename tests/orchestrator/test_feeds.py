"""The expected deliveries in Dagster: one check per feed on submissions, judged by feed_freshness_sensor.

Real Dagster (an ephemeral instance, the project's Definitions) and a real metadata DB on SQLite
and Postgres; `now` is handed to the sensor's tick (judge_feeds) so a test can let time pass.
"""

from datetime import UTC, datetime

import dagster as dg
import pytest

from orchestrator.definitions import defs
from orchestrator.defs.intake import assets
from orchestrator.defs.intake.feeds import FEEDS, expected_deliveries, feed_freshness_sensor, judge_feeds
from orchestrator.defs.resources import WorkerLauncher
from tests.helpers import add_submission
from workers.db import make_engine

ELIGIBILITY = "feed_acme_eligibility_monthly"
CLAIMS = "feed_acme_medical_claims_weekly"


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.fixture
def metadata_db(monkeypatch, migrated_db_url: str) -> str:
    monkeypatch.setenv("METADATA_DB_URL", migrated_db_url)
    return migrated_db_url


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as made:
        yield made


def deliver(url: str, submission_id: str, file_type: str, registered: datetime) -> None:
    engine = make_engine(url)
    add_submission(engine, submission_id, file_type, registered, status="staged")
    engine.dispose()


def evaluations(result: dg.SensorResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.asset_events or () if isinstance(e, dg.AssetCheckEvaluation)}


def test_each_feed_is_a_check_on_submissions_named_after_it_and_describing_the_feed():
    checks = {key.name: key for key in defs.resolve_asset_graph().asset_check_keys}
    assert {ELIGIBILITY, CLAIMS} <= set(checks)
    assert checks[ELIGIBILITY].asset_key == assets.submissions.key
    spec = next(s for s in expected_deliveries.check_specs if s.name == ELIGIBILITY)
    for words in ("acme", "eligibility", "0 0 1 * *", "P3D"):
        assert words in spec.description
    assert len(FEEDS) == len(list(expected_deliveries.check_specs))


def test_the_sensor_warns_when_a_delivery_is_late_and_errs_past_the_grace_period(metadata_db, instance):
    deliver(metadata_db, "sub-oct", "eligibility", at(2026, 10, 30))
    deliver(metadata_db, "sub-nov", "eligibility", at(2026, 11, 28))
    context = dg.build_sensor_context(instance=instance, definitions=defs)

    on_time = judge_feeds(context, at(2026, 11, 30, 12))
    assert evaluations(on_time)[ELIGIBILITY].passed

    late = judge_feeds(
        dg.build_sensor_context(instance=instance, definitions=defs, cursor=on_time.cursor), at(2027, 1, 1, 6)
    )
    warned = evaluations(late)[ELIGIBILITY]
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert warned.metadata["due"].value == "2027-01-01T00:00+00:00"
    assert warned.metadata["grace_until"].value == "2027-01-04T00:00+00:00"
    assert warned.metadata["last_delivery"].value == "2026-11-28T00:00+00:00"

    past = judge_feeds(
        dg.build_sensor_context(instance=instance, definitions=defs, cursor=late.cursor), at(2027, 1, 4, 1)
    )
    erred = evaluations(past)[ELIGIBILITY]
    assert not erred.passed and erred.severity == dg.AssetCheckSeverity.ERROR
    assert erred.metadata["state"].value == "past_grace"


def test_an_unchanged_verdict_is_not_recorded_again_and_a_delivery_clears_the_check(metadata_db, instance):
    first = judge_feeds(dg.build_sensor_context(instance=instance, definitions=defs), at(2027, 1, 5))
    assert not evaluations(first)[ELIGIBILITY].passed  # never delivered
    again = judge_feeds(
        dg.build_sensor_context(instance=instance, definitions=defs, cursor=first.cursor), at(2027, 1, 5, 0, 1)
    )
    assert evaluations(again) == {} and "no verdict changed" in again.skip_reason.skip_message

    deliver(metadata_db, "sub-jan", "eligibility", at(2027, 1, 5, 0, 30))
    cleared = judge_feeds(
        dg.build_sensor_context(instance=instance, definitions=defs, cursor=again.cursor), at(2027, 1, 5, 1)
    )
    assert set(evaluations(cleared)) == {ELIGIBILITY} and evaluations(cleared)[ELIGIBILITY].passed


def test_a_materialization_of_submissions_has_every_verdict_recorded_again(metadata_db, instance):
    """The UI judges a check against the asset's latest materialization: after a delivery of another
    feed materializes submissions, the late feed's unchanged verdict is recorded again, or its check
    would read "not evaluated" (seen in the browser test)."""
    first = judge_feeds(dg.build_sensor_context(instance=instance, definitions=defs), at(2027, 1, 5))
    instance.add_dynamic_partitions(assets.SUBMITTERS, ["acme"])
    instance.report_runless_asset_event(dg.AssetMaterialization(assets.submissions.key, partition="acme"))

    after = judge_feeds(
        dg.build_sensor_context(instance=instance, definitions=defs, cursor=first.cursor), at(2027, 1, 5, 0, 1)
    )

    assert set(evaluations(after)) == {feed.check_name for feed in FEEDS}
    assert not evaluations(after)[ELIGIBILITY].passed
    quiet = judge_feeds(
        dg.build_sensor_context(instance=instance, definitions=defs, cursor=after.cursor), at(2027, 1, 5, 0, 2)
    )
    assert evaluations(quiet) == {}


def test_a_tick_through_the_daemons_validation_records_every_feed_and_the_metadata_names_no_key(metadata_db, instance):
    deliver(metadata_db, "sub-claims", "medical_claims", datetime.now(UTC))
    result = feed_freshness_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    recorded = {e.check_name: e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)}
    assert set(recorded) == {feed.check_name for feed in FEEDS}
    assert recorded[CLAIMS].passed, "registered just now: this week's claims are in"
    assert not recorded[ELIGIBILITY].passed, "acme never sent eligibility: the dev stack's late feed"
    assert all("inbox/" not in str(e.metadata) for e in recorded.values())


def test_a_tick_with_the_metadata_db_down_records_nothing_and_keeps_its_cursor(instance, monkeypatch):
    monkeypatch.setenv("METADATA_DB_URL", "postgresql+psycopg2://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("DB_CONNECT_ATTEMPTS", "1")
    result = judge_feeds(dg.build_sensor_context(instance=instance, definitions=defs, cursor="{}"), at(2027, 1, 5))
    assert not result.asset_events and result.cursor == "{}"
    assert "metadata database unavailable" in result.skip_reason.skip_message


@pytest.mark.dagster_runs
def test_executing_the_checks_from_the_ui_asks_the_audit_worker_for_the_same_verdicts(platform_env):
    deliver(platform_env.metadata_db_url, "sub-claims", "medical_claims", datetime.now(UTC))
    check_defs = dg.Definitions(
        assets=[assets.submissions],
        asset_checks=[expected_deliveries],
        jobs=[dg.define_asset_job("check_feeds", selection=dg.AssetSelection.checks(expected_deliveries))],
        resources={"launcher": WorkerLauncher()},
    )
    result = check_defs.resolve_job_def("check_feeds").execute_in_process()
    found = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert found[CLAIMS].passed and found[CLAIMS].metadata["submitter"].value == "acme"
    assert not found[ELIGIBILITY].passed and found[ELIGIBILITY].severity == dg.AssetCheckSeverity.ERROR
