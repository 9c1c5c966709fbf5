"""Expected deliveries: one check per feed on `submissions`, judged by the daemon without anyone clicking.

The feeds are the versioned workers/feed_definitions.json (workers.feeds says how lateness is
judged), read when the code location loads: a bad definition, or a feed of a type no layout
classifies, stops the load with the entry's name. `feed_freshness_sensor` judges every feed each
minute from the metadata DB and records a check's verdict whenever it changes: passed, failed
with WARN while a delivery is late, failed with ERROR past the grace period. Executing the checks
from the UI asks the audit worker for the same verdicts now.
"""

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import dagster as dg
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.defs.intake import assets
from orchestrator.defs.resources import WorkerLauncher
from workers import feeds, layouts
from workers.db import metadata_engine
from workers.runtime import describe_failure
from workers.settings import load_metadata_db_url

FEEDS = feeds.packaged_feeds(layouts.file_types(layouts.parse_definitions(layouts.packaged_definitions())[1]))
SEVERITY = {feeds.LATE: dg.AssetCheckSeverity.WARN, feeds.PAST_GRACE: dg.AssetCheckSeverity.ERROR}
INTERVAL_SECONDS = 60


def spec(feed: feeds.Feed) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        name=feed.check_name,
        asset=assets.submissions.key,
        description=f"Expected delivery `{feed.feed_id}`: {feed.describe()}",
    )


@dg.multi_asset_check(
    specs=[spec(feed) for feed in FEEDS],
    can_subset=True,
    description="Judges the expected deliveries now (the audit worker, --feeds).",
)
def expected_deliveries(
    context: dg.AssetCheckExecutionContext, launcher: WorkerLauncher
) -> Iterator[dg.AssetCheckResult]:
    report = launcher.run(context=context.op_execution_context, worker="audit", extras={"feeds": True})
    selected = {key.name for key in context.selected_asset_check_keys}
    for record in report["feeds"]:
        name = f"feed_{record['feed_id']}"
        if name in selected:
            yield dg.AssetCheckResult(
                asset_key=assets.submissions.key,
                check_name=name,
                passed=bool(record["passed"]),
                severity=SEVERITY.get(record["state"], dg.AssetCheckSeverity.WARN),
                metadata={k: v for k, v in record.items() if k not in ("feed_id", "passed")},
            )


@dg.sensor(
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Judges every expected delivery (workers/feed_definitions.json) from the submission table and "
        "records its feed_* check on submissions whenever the verdict changes: WARN late, ERROR past grace."
    ),
)
def feed_freshness_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    return judge_feeds(context, datetime.now(UTC))


def judge_feeds(
    context: dg.SensorEvaluationContext, now: datetime, expected: Sequence[feeds.Feed] = FEEDS
) -> dg.SensorResult:
    """The sensor's tick at `now`: an evaluation for each feed whose verdict changed since the cursor."""
    try:  # the metadata DB alone: the sensor reads no object
        with metadata_engine(load_metadata_db_url()) as engine:
            verdicts = feeds.verdicts(engine, expected, now)
    except SQLAlchemyError as exc:
        context.log.warning(f"feed freshness skipped this tick: {describe_failure(exc, None)}")
        return dg.SensorResult(skip_reason="metadata database unavailable", cursor=context.cursor)
    before = json.loads(context.cursor or "{}")
    after = {v.feed.feed_id: signature(v) for v in verdicts}
    # The UI shows a check's result against the asset's latest materialization: once a delivery
    # (or a staging) materializes submissions, every verdict is recorded again, or the checks
    # whose verdict did not change would read "not evaluated" until it does.
    after[LATEST_MATERIALIZATION] = latest_materialization(context.instance)
    renewed = before.get(LATEST_MATERIALIZATION) != after[LATEST_MATERIALIZATION]
    changed = [v for v in verdicts if renewed or before.get(v.feed.feed_id) != after[v.feed.feed_id]]
    return dg.SensorResult(
        asset_events=[evaluation(v) for v in changed],
        skip_reason=None if changed else summary(verdicts),
        cursor=json.dumps(after, sort_keys=True),
    )


# The cursor's entry for the submissions asset's latest materialization (feed ids cannot start with "@").
LATEST_MATERIALIZATION = "@submissions"


def latest_materialization(instance: dg.DagsterInstance) -> str:
    records = instance.fetch_materializations(assets.submissions.key, limit=1).records
    return str(records[0].storage_id) if records else ""


def signature(verdict: feeds.FeedVerdict) -> str:
    """What, changed, makes a new evaluation: the state, the due time judged and its delivery."""
    parts = (verdict.state, verdict.due_at, verdict.overdue_since, verdict.delivered_at)
    return "|".join(p.isoformat() if isinstance(p, datetime) else str(p) for p in parts)


def evaluation(verdict: feeds.FeedVerdict) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=assets.submissions.key,
        check_name=verdict.feed.check_name,
        passed=verdict.passed,
        severity=SEVERITY.get(verdict.state, dg.AssetCheckSeverity.WARN),
        metadata=verdict.metadata(),
    )


def summary(verdicts: Sequence[feeds.FeedVerdict]) -> str:
    counts = {
        state: sum(v.state == state for v in verdicts) for state in (feeds.DELIVERED, feeds.LATE, feeds.PAST_GRACE)
    }
    return "no verdict changed: " + ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in counts.items())
