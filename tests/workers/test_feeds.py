"""Expected deliveries (workers.feeds): the definitions, the registry sync, and the freshness verdicts."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.helpers import add_submission
from workers import feeds, layouts
from workers.db import make_engine
from workers.feeds import Feed, judge
from workers.runtime import WorkerError

MONTHLY = {
    "feed_id": "acme_elig",
    "submitter_id": "acme",
    "file_type": "eligibility",
    "cadence": "0 0 1 * *",
    "grace": "P3D",
}
WEEKLY = {
    **MONTHLY,
    "feed_id": "acme_claims",
    "file_type": "medical_claims",
    "cadence": "0 12 * * mon",
    "grace": "PT12H",
}


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def parse(*entries: dict, file_types=None) -> list[Feed]:
    return feeds.parse_definitions(json.dumps({"registry_version": 1, "feeds": list(entries)}), file_types)[1]


MONTHLY_FEED, WEEKLY_FEED = parse(MONTHLY, WEEKLY)


# --- the definitions --------------------------------------------------------------------------


def test_the_packaged_feeds_parse_and_name_types_the_packaged_layouts_classify():
    known = layouts.file_types(layouts.parse_definitions(layouts.packaged_definitions())[1])
    packaged = feeds.packaged_feeds(known)
    assert {f.feed_id for f in packaged} >= {"acme_medical_claims_weekly", "acme_eligibility_monthly"}


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([{**MONTHLY, "cadence": "every month"}], r"feed #0 \(acme_elig\): cadence 'every month' needs five fields"),
        ([{**MONTHLY, "cadence": "0 0 31 2 *"}], r"feed #0 \(acme_elig\): cadence .* never falls due"),
        ([MONTHLY, {**WEEKLY, "feed_id": "acme_elig"}], "feed acme_elig repeats the feed_id of feed acme_elig"),
        (
            [MONTHLY, {**MONTHLY, "feed_id": "again"}],
            "feed again repeats the submitter and file type of feed acme_elig",
        ),
        ([{**MONTHLY, "grace": "3 days"}], r"feed #0 \(acme_elig\): grace '3 days' is no ISO-8601 duration"),
        ([{**MONTHLY, "grace": "P1M"}], "months and years have no fixed length"),
        ([{**MONTHLY, "early": "PT"}], r"feed #0 \(acme_elig\): early 'PT' is no ISO-8601 duration"),
        ([{**MONTHLY, "graec": "P1D"}], r"feed #0 \(acme_elig\) has unknown field\(s\) graec"),
        ([{k: v for k, v in MONTHLY.items() if k != "cadence"}], r"feed #0 \(acme_elig\) must have the fields"),
        ([{**MONTHLY, "feed_id": "Acme-Elig"}], "feed_id must be lower-case letters"),
        ([{**MONTHLY, "submitter_id": "*"}], "not every submitter's"),
        ([WEEKLY, {**MONTHLY, "grace": ""}], r"feed #1 \(acme_elig\) has an empty or non-text field"),
    ],
)
def test_a_bad_definition_is_refused_naming_the_entry(entries, reason):
    with pytest.raises(WorkerError, match=reason):
        parse(*entries)


def test_a_feed_of_a_type_no_layout_classifies_is_refused():
    with pytest.raises(WorkerError, match="feed #0 \\(acme_elig\\): no layout classifies file type 'eligibility'"):
        parse(MONTHLY, file_types={"medical_claims"})


def test_not_json_and_no_feed_list_are_refused():
    with pytest.raises(WorkerError, match="malformed"):
        feeds.parse_definitions("{not json")
    with pytest.raises(WorkerError, match="malformed"):
        feeds.parse_definitions(json.dumps({"registry_version": 1, "feeds": {}}))


def test_durations_read_weeks_days_hours_and_minutes():
    assert feeds.duration("P1W2DT3H4M") == timedelta(weeks=1, days=2, hours=3, minutes=4)
    assert feeds.duration("PT12H") == timedelta(hours=12)
    for bad in ("P", "PT", "P1Y", "3D", "P1.5D"):
        with pytest.raises(ValueError):
            feeds.duration(bad)


# --- the verdicts -----------------------------------------------------------------------------


def test_a_delivery_before_the_due_time_meets_it():
    verdict = judge(MONTHLY_FEED, [at(2026, 11, 28)], at(2026, 12, 1, 0, 5))
    assert verdict.passed and verdict.due_at == at(2026, 12, 1) and verdict.delivered_at == at(2026, 11, 28)
    assert verdict.next_due_at == at(2027, 1, 1)


def test_nothing_delivered_is_late_at_the_due_time_and_past_grace_after_it():
    last = [at(2026, 10, 30)]  # met November's due time, nothing since
    assert judge(MONTHLY_FEED, last, at(2026, 11, 30, 23, 59)).passed
    late = judge(MONTHLY_FEED, last, at(2026, 12, 1, 0, 1))
    assert (late.state, late.overdue_since, late.grace_until) == ("late", at(2026, 12, 1), at(2026, 12, 4))
    assert judge(MONTHLY_FEED, last, at(2026, 12, 4)).state == "late"
    assert judge(MONTHLY_FEED, last, at(2026, 12, 4, 0, 1)).state == "past_grace"


def test_a_late_delivery_within_grace_meets_the_due_time_it_missed():
    verdict = judge(MONTHLY_FEED, [at(2026, 10, 30), at(2026, 12, 2)], at(2026, 12, 2, 1))
    assert verdict.passed and verdict.delivered_at == at(2026, 12, 2)


def test_a_late_delivery_is_not_counted_again_for_the_next_due_time_when_early_is_narrow():
    weekly_window = parse({**MONTHLY, "early": "P7D"})[0]
    # October's file came on 1 October 01:00, November's on 2 November: December's needs another.
    verdict = judge(weekly_window, [at(2026, 10, 1, 1), at(2026, 11, 2)], at(2026, 12, 1, 1))
    assert verdict.state == "late" and verdict.delivered_at is None
    assert verdict.last_delivery_at == at(2026, 11, 2)


def test_by_default_a_delivery_after_a_due_time_counts_as_early_for_the_next():
    verdict = judge(MONTHLY_FEED, [at(2026, 10, 1, 1), at(2026, 11, 2)], at(2026, 12, 1, 1))
    assert verdict.passed and verdict.delivered_at == at(2026, 11, 2)


def test_a_missed_month_keeps_the_feed_past_grace_into_the_next_month():
    verdict = judge(MONTHLY_FEED, [at(2026, 9, 30)], at(2026, 12, 1, 1))  # November and December missed
    assert verdict.state == "past_grace" and verdict.overdue_since == at(2026, 11, 1)
    assert verdict.missed == 2


def test_an_early_window_decides_whether_a_delivery_counts():
    early = parse({**MONTHLY, "early": "P2D"})[0]
    now = at(2026, 12, 1, 1)
    assert judge(early, [at(2026, 11, 29, 12)], now).passed
    too_early = judge(early, [at(2026, 11, 20)], now)  # counted for November's due time (late), not December's
    assert too_early.state == "late" and too_early.last_delivery_at == at(2026, 11, 20)


def test_month_ends_of_different_lengths_and_a_leap_day():
    end_of_month = parse({**MONTHLY, "cadence": "0 18 28-31 * *", "feed_id": "eom"})[0]
    # February 2028 has 29 days: due on the 28th and on the 29th.
    assert judge(end_of_month, [at(2028, 2, 28, 17)], at(2028, 2, 28, 19)).passed
    verdict = judge(end_of_month, [at(2028, 2, 28, 17)], at(2028, 2, 29, 19))
    assert verdict.state == "late" and verdict.due_at == at(2028, 2, 29, 18)
    assert judge(end_of_month, [at(2028, 2, 28, 17)], at(2028, 3, 1, 0)).state == "late"  # grace P3D


def test_never_delivered_is_past_grace_since_the_oldest_due_time_looked_at():
    verdict = judge(MONTHLY_FEED, [], at(2026, 12, 7))
    assert verdict.state == "past_grace" and verdict.last_delivery_at is None
    assert verdict.overdue_since == at(2026, 1, 1) and verdict.missed == feeds.LOOKBACK_TICKS
    assert verdict.metadata()["last_delivery"] == "never"


def test_a_delivery_in_the_future_of_now_does_not_count():
    assert judge(WEEKLY_FEED, [at(2026, 12, 7, 11)], at(2026, 12, 7, 10)).last_delivery_at is None


def test_the_metadata_holds_times_and_the_feed_never_keys():
    metadata = judge(WEEKLY_FEED, [at(2026, 12, 7, 11)], at(2026, 12, 7, 13)).metadata()
    assert metadata["submitter"] == "acme" and metadata["file_type"] == "medical_claims"
    assert metadata["due"] == "2026-12-07T12:00+00:00" and metadata["grace_until"] == "2026-12-08T00:00+00:00"
    assert not any("inbox/" in str(v) for v in metadata.values())


# --- against the metadata DB ------------------------------------------------------------------


def test_deliveries_are_the_submitters_submissions_of_the_type_duplicates_left_out(migrated_db_url):
    engine = make_engine(migrated_db_url)
    add_submission(engine, "sub-elig", "eligibility", at(2026, 11, 30))
    add_submission(engine, "sub-dup", "eligibility", at(2026, 12, 2), status="duplicate")
    add_submission(engine, "sub-claims", "medical_claims", at(2026, 12, 2))
    add_submission(engine, "sub-old", "eligibility", at(2024, 1, 1))

    found = feeds.deliveries(engine, [MONTHLY_FEED, WEEKLY_FEED], since=at(2026, 1, 1))
    assert found == {"acme_elig": [at(2026, 11, 30)], "acme_claims": [at(2026, 12, 2)]}
    (elig, claims) = feeds.verdicts(engine, [MONTHLY_FEED, WEEKLY_FEED], at(2026, 12, 3))
    assert elig.passed and elig.delivered_at == at(2026, 11, 30)
    assert claims.passed and claims.delivered_at == at(2026, 12, 2)  # due Monday 30 Nov: late, made up
    engine.dispose()


def registry(url: str) -> dict[str, tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT feed_id, cadence, active, retired_at FROM feed_registry")).all()
    engine.dispose()
    return {r.feed_id: (r.cadence, bool(r.active), r.retired_at is not None) for r in rows}


def test_the_registry_sync_adds_changes_retires_and_brings_back_feeds(migrated_db_url):
    engine = make_engine(migrated_db_url)
    assert feeds.sync(engine, parse(MONTHLY, WEEKLY)) == {"added": 2, "changed": 0, "retired": 0, "unchanged": 0}
    assert feeds.sync(engine, parse(MONTHLY, WEEKLY))["unchanged"] == 2
    assert feeds.sync(engine, parse({**MONTHLY, "cadence": "0 6 2 * *"}))["changed"] == 1
    assert registry(migrated_db_url) == {
        "acme_elig": ("0 6 2 * *", True, False),
        "acme_claims": ("0 12 * * mon", False, True),
    }
    assert [f.feed_id for f in feeds.active_feeds(engine)] == ["acme_elig"]
    assert feeds.sync(engine, parse(MONTHLY, WEEKLY)) == {"added": 0, "changed": 2, "retired": 0, "unchanged": 0}
    assert registry(migrated_db_url)["acme_claims"] == ("0 12 * * mon", True, False)
    engine.dispose()


def run_layouts_worker(*args: str):
    return subprocess.run(
        [sys.executable, "-m", "workers.layouts", *args],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_layouts_worker_syncs_the_packaged_feeds_and_reports_their_counts(platform_env):
    done = run_layouts_worker()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["feeds_added"] == result["feeds_active"] == len(feeds.packaged_feeds())
    assert result["feeds_registry_version"] >= 1
    assert registry(platform_env.metadata_db_url)["acme_eligibility_monthly"] == ("0 0 1 * *", True, False)


def test_the_layouts_worker_refuses_a_bad_feed_file_naming_the_entry_and_writes_nothing(platform_env, tmp_path):
    path = tmp_path / "feeds.json"
    path.write_text(json.dumps({"registry_version": 2, "feeds": [MONTHLY, {**WEEKLY, "cadence": "0 25 * * *"}]}))
    done = run_layouts_worker("--feeds", str(path))
    assert done.returncode == 1
    assert "layouts: error: feed #1 (acme_claims): cadence hour field '25'" in done.stderr
    assert registry(platform_env.metadata_db_url) == {}
