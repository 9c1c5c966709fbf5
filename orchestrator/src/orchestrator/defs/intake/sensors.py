"""inbox_discovery_sensor: notices complete inbox groups and asks for one registration run each.

The decisions live in `workers.discovery` (pure, unit-tested); this module does the listing,
the logging an operator sees and the RunRequests. A partner's key can carry a member's name: the
grouping key goes into the run config only (the job's contract); tags, run keys, log lines and
observations name groups and files by their ids (workers.inbox.group_id, file_id).
"""

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, replace
from datetime import UTC, datetime

import dagster as dg
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.defs.intake import jobs, watch
from workers import discovery
from workers.db import metadata_engine
from workers.inbox import InboxObject, file_id, group_id, rejection_reason
from workers.outcomes import record_rejections, rejections_on_record
from workers.runtime import describe_failure
from workers.settings import (
    IntakeSettings,
    SettingsError,
    load_event_settings,
    load_intake_settings,
    load_settings,
)

SHOWN_NAMES = 5
# Dagster's strict tag value form, so the tags filter and display everywhere.
STRICT_TAG_VALUE = re.compile(r"[A-Za-z0-9_.-]{0,63}")
NOT_IN_TAG_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


def utc_now() -> datetime:
    """The sensor's clock: tests replace it to step through quiet windows without waiting."""
    return datetime.now(UTC)


def sensor_interval_seconds(env: Mapping[str, str] = os.environ) -> int:
    try:
        seconds = int(env.get("SENSOR_INTERVAL_SECONDS", "30").strip())
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise SettingsError("SENSOR_INTERVAL_SECONDS must be a whole number of seconds >= 1")
    return seconds


# Dagster's sensor daemon looks at its sensors every 5 s and evaluates one once its minimum interval
# has passed since the last tick. Measured under dagster dev (2026-12-06): with a minimum of exactly
# 5 s the ticks came 5 and 10 s apart, alternately (a loop a few milliseconds early waits a whole
# loop more), so a drop waited ~9 s for the sensor. A second of slack gives a tick every
# SENSOR_INTERVAL_SECONDS, rounded up to the daemon's 5 s loop.
DAEMON_SLACK_SECONDS = 1


def minimum_interval_seconds(interval: int) -> int:
    """The sensor definition's minimum interval for a SENSOR_INTERVAL_SECONDS of `interval`."""
    return max(1, interval - DAEMON_SLACK_SECONDS)


@dg.sensor(
    # One run for a lone complete group, batch runs for several (batches.py).
    jobs=[jobs.register_submission_from_group_job, jobs.register_submissions_from_groups_job],
    minimum_interval_seconds=minimum_interval_seconds(sensor_interval_seconds()),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Finds new inbox objects (by bucket events, or by listing the inbox: DISCOVERY_MODE), decides "
        "which drops are complete (marker or quiescence) and registers each once."
    ),
)
def inbox_discovery_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    intake = load_intake_settings()
    mode = load_event_settings()
    cursor = previous_cursor(context)
    now = utc_now()
    look = (
        watch.by_events(intake, mode, cursor, now, context.log) if mode.mode == "events" else watch.by_listing(intake)
    )
    evaluation = discovery.evaluate_views(look.views, look.uploads, cursor.groups, now, intake, listed=look.listed)
    evaluation = replace(evaluation, shallow_keys=[obj.key for obj in look.shallow])
    report(context.log, evaluation, intake)
    observations = record_shallow(context.log, look.shallow, intake)
    following = discovery.Cursor(
        groups=evaluation.state,
        position=look.position or cursor.position,
        reconciled_at=look.reconciled_at or cursor.reconciled_at,
        missed=cursor.missed + look.missed,
    )
    return dg.SensorResult(
        run_requests=run_request(evaluation.complete),
        skip_reason=None if evaluation.complete else waiting_summary(evaluation),
        cursor=discovery.dump_cursor(following),
        asset_events=observations + look.observations,
    )


def record_shallow(log, shallow: list[InboxObject], intake: IntakeSettings) -> list[dg.AssetObservation]:
    """Keys that form no group get a recorded outcome in inbox_rejection, and the new ones an
    observation of the inbox asset: an entry in the UI that stays, where tick logs scroll away.

    Fails soft: with the metadata DB down the tick still requests the complete groups and keeps its
    cursor (a drop must not wait on a bookkeeping write); the keys are still shallow at the next
    tick and are recorded then."""
    if not shallow:
        return []
    reason = lambda key: rejection_reason(key, intake.inbox_prefix, intake.group_by_depth)  # noqa: E731
    settings = load_settings()
    try:
        with metadata_engine(settings.metadata_db_url) as engine:
            new = record_rejections(engine, ((obj, reason(obj.key), None) for obj in shallow))
            if not new:
                return []
            return [jobs.rejections_observed([asdict(r) for r in new], rejections_on_record(engine))]
    except SQLAlchemyError as exc:
        watch.retry_later(shallow)
        # describe_failure gives one line without the driver's detail lines, which can quote keys.
        log.warning(
            f"{len(shallow)} rejection(s) not recorded this tick, tried again at the next: "
            f"{describe_failure(exc, settings)}"
        )
        return []


def previous_cursor(context: dg.SensorEvaluationContext) -> discovery.Cursor:
    try:
        return discovery.load_cursor(context.cursor)
    except ValueError as exc:
        # Starting afresh only restarts quiet clocks; run keys are deterministic, so nothing registers twice.
        context.log.warning(f"ignoring unreadable cursor, starting afresh: {exc}")
        return discovery.Cursor({})


def report(log, evaluation: discovery.Evaluation, intake: IntakeSettings) -> None:
    if evaluation.shallow_keys:
        log.warning(
            f"{len(evaluation.shallow_keys)} inbox object(s) belong to no group (a group needs "
            f"{intake.group_by_depth} folders under {intake.inbox_prefix}, and a safe key); "
            f"first: {first([file_id(key) for key in evaluation.shallow_keys])} (inbox_rejection has their keys)"
        )
    for upload in evaluation.abandoned_uploads:
        log.warning(
            f"multipart upload of {file_id(upload.key)} (upload id {upload.upload_id}, "
            f"initiated {upload.initiated.isoformat()}) "
            f"is older than {intake.abandoned_upload_hours:g} h: treated as abandoned, "
            "it no longer holds its group open"
        )
    if evaluation.blocked:
        blocked = [group_id(key) for key in evaluation.blocked]
        log.info(f"{len(blocked)} group(s) wait for multipart uploads: {first(blocked)}")
    if evaluation.complete:
        groups = [
            f"{group_id(c.group.grouping_key)} of {c.group.submitter_id!r} ({c.method})" for c in evaluation.complete
        ]
        log.info(f"{len(groups)} group(s) complete: {first(groups)}")


def waiting_summary(evaluation: discovery.Evaluation) -> str:
    pending = sum(not s.requested for s in evaluation.state.values())
    return f"no group complete: {pending} pending, {len(evaluation.blocked)} waiting for multipart uploads"


def first(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    return ", ".join(names[:SHOWN_NAMES]) + more


def run_request(completes: list[discovery.CompleteGroup]) -> list[dg.RunRequest]:
    """The tick's runs: the single-group job for a lone complete group, batch runs for several
    (orchestrator.defs.intake.batches, which imports this module's tag_value)."""
    from orchestrator.defs.intake import batches

    return batches.run_requests(completes)


def tag_value(text: str) -> str:
    """text itself when Dagster's strict form allows it, else a readable stand-in with a hash of it."""
    if STRICT_TAG_VALUE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return NOT_IN_TAG_VALUE.sub("_", text)[:54] + "-" + digest
