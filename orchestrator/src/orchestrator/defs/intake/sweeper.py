"""intake_sweeper: asks again for what did not converge by itself, and says when a drop is stuck.

Step retries and run retries (jobs.py, the instance's run_retries) handle most failures inside
a few minutes. What is left is taken up here, every SWEEP_INTERVAL_SECONDS:

- a drop whose registration run failed with no Dagster retry left is asked for again, after
  SWEEP_BACKOFF_SECONDS doubling per round, with a run key that names the round (`...~sweep-2`)
  so each round is one run and the content is still registered once (the registrar is
  idempotent);
- a submission registered STAGING_GRACE_MINUTES ago, still not staged and with no run of its
  group going, gets a staging run (stage_submission_job), with the same back-off;
- after SWEEP_ROUNDS rounds the drop `needs_attention`: drop_recovery says so with the last
  error, an observation of the inbox asset shows it, and the `no_stuck_drops` check fails.

A later success of any run of the group (an operator's re-execution included) marks the drop
converged. A batch run (orchestrator.defs.intake.batches) counts for each of its drops as if it had
been that drop's own run (seen_by): a success for the groups it ended well, and for the others a
failure that is asked for again with the single-group job. Runs are read from the instance;
decisions are the pure functions below.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.defs.intake import assets, batches, jobs
from workers.db import metadata_engine
from workers.recovery import (
    CONVERGED,
    NEEDS_ATTENTION,
    REGISTRATION,
    RETRYING,
    STAGING,
    Recovery,
    Stuck,
    Unstaged,
    open_recoveries,
    save,
    stuck_drops,
    unstaged_submissions,
)
from workers.runtime import describe_failure
from workers.settings import RecoverySettings, load_settings

ACTIVE = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}
FAILED = {"FAILURE", "CANCELED"}
# How far back failed runs are looked for (open drop_recovery rows are followed whatever their age).
LOOKBACK = timedelta(days=7)
# Dagster's own retry is made within seconds of a failure; after this, the sweeper stops waiting for it.
RETRY_PENDING = timedelta(minutes=5)
CHECK_NAME = "no_stuck_drops"
SHOWN = 20


@dataclass(frozen=True)
class RunInfo:
    """What the sweeper needs of a run: ids, status, times and tags (no keys)."""

    run_id: str
    job: str
    status: str
    created: datetime
    ended: datetime | None
    tags: dict[str, str]
    run_config: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def sweep_round(self) -> int:
        return int(self.tags.get(jobs.SWEEP_TAG, "0") or 0)

    @property
    def retry_pending(self) -> bool:
        return self.tags.get(WILL_RETRY_TAG) == "true" and AUTO_RETRY_RUN_ID_TAG not in self.tags


@dataclass(frozen=True)
class Ask:
    """A run the sweeper asks for."""

    job: str
    run_key: str
    run_config: dict
    tags: dict[str, str]


@dataclass(frozen=True)
class Verdict:
    recovery: Recovery
    ask: Ask | None = None


def registration_verdict(
    drop: str,
    drop_runs: Sequence[RunInfo],
    group_runs: Sequence[RunInfo],
    now: datetime,
    settings: RecoverySettings,
    last_error: str = "",
) -> Verdict | None:
    """None while the drop needs nothing of the sweeper (a run going, Dagster's retry pending)."""
    latest = max(drop_runs, key=lambda r: r.created)
    group = latest.tags.get(jobs.GROUP_TAG, "")
    rounds = max(r.sweep_round for r in drop_runs)
    record = Recovery(drop, REGISTRATION, group, RETRYING, rounds, last_error, latest.run_id)
    if any(r.status == "SUCCESS" for r in drop_runs) or any(
        r.status == "SUCCESS" and r.created > latest.created for r in group_runs
    ):
        return Verdict(replace(record, state=CONVERGED))
    if any(r.active for r in (*drop_runs, *group_runs)) or latest.status not in FAILED:
        return None
    if retry_coming(latest, now):
        return None
    if rounds >= settings.sweep_rounds:
        return Verdict(replace(record, state=NEEDS_ATTENTION))
    due = (latest.ended or latest.created) + backoff(settings, rounds)
    if now < due:
        return Verdict(replace(record, next_attempt_at=due))
    tags = {k: v for k, v in latest.tags.items() if k.startswith("health-intake/")}
    ask = Ask(
        job=jobs.register_submission_from_group_job.name,
        run_key=f"{drop}~sweep-{rounds + 1}",
        run_config=latest.run_config,
        tags={**tags, jobs.SWEEP_TAG: str(rounds + 1)},
    )
    return Verdict(replace(record, rounds=rounds + 1), ask)


def staging_verdict(
    unstaged: Unstaged,
    stage_runs: Sequence[RunInfo],
    group_runs: Sequence[RunInfo],
    now: datetime,
    settings: RecoverySettings,
    last_error: str = "",
) -> Verdict | None:
    if any(r.active or retry_coming(r, now) for r in (*stage_runs, *group_runs)):
        return None
    rounds = max((r.sweep_round for r in stage_runs), default=0)
    latest = max(stage_runs, key=lambda r: r.created, default=None)
    record = Recovery(
        unstaged.submission_id,
        STAGING,
        unstaged.group_id,
        RETRYING,
        rounds,
        last_error,
        latest.run_id if latest else None,
        unstaged.submission_id,
    )
    if rounds >= settings.sweep_rounds:
        return Verdict(replace(record, state=NEEDS_ATTENTION))
    since = (latest.ended or latest.created) if latest else unstaged.registered_at
    due = since + (backoff(settings, rounds - 1) if latest else timedelta(minutes=settings.staging_grace_minutes))
    if now < due:
        return Verdict(replace(record, next_attempt_at=due))
    ask = Ask(
        job=jobs.stage_submission_job.name,
        run_key=f"{unstaged.submission_id}~stage-{rounds + 1}",
        run_config={"ops": {"stage_registered_submission": {"config": {"submission_id": unstaged.submission_id}}}},
        tags={
            jobs.GROUP_TAG: unstaged.group_id,
            jobs.SUBMISSION_TAG: unstaged.submission_id,
            jobs.SWEEP_TAG: str(rounds + 1),
        },
    )
    return Verdict(replace(record, rounds=rounds + 1), ask)


def retry_coming(run: RunInfo, now: datetime) -> bool:
    """Dagster said it will retry this failed run and has not yet: its retry comes within seconds."""
    return run.retry_pending and now - (run.ended or run.created) < RETRY_PENDING


def backoff(settings: RecoverySettings, rounds: int) -> timedelta:
    return timedelta(seconds=settings.sweep_backoff_seconds * 2 ** max(rounds, 0))


# --- the sensor -------------------------------------------------------------------------------


@dg.sensor(
    jobs=[jobs.register_submission_from_group_job, jobs.stage_submission_job],
    minimum_interval_seconds=jobs.RECOVERY.sweep_interval_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Asks again for drops whose runs failed with no retry left, and stages registered submissions "
        "left unstaged; after SWEEP_ROUNDS rounds a drop needs attention (drop_recovery, no_stuck_drops)."
    ),
)
def intake_sweeper(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    settings, recovery = load_settings(), jobs.RECOVERY
    now = datetime.now(UTC)
    try:
        with metadata_engine(settings.metadata_db_url) as engine:
            verdicts = sweep(context.instance, engine, now, recovery)
            changed = save(engine, [v.recovery for v in verdicts], now)
            stuck = stuck_drops(engine, now, timedelta(minutes=recovery.stuck_after_minutes))
    except SQLAlchemyError as exc:
        # Nothing asked for, nothing lost: the next tick looks again. A driver's detail can quote keys.
        context.log.warning(f"sweeper skipped this tick: metadata DB: {describe_failure(exc, settings)}")
        return dg.SensorResult(skip_reason="metadata database unavailable", cursor=context.cursor)
    asks = [v.ask for v in verdicts if v.ask]
    for ask in asks:
        group, round_ = ask.tags.get(jobs.GROUP_TAG), ask.tags[jobs.SWEEP_TAG]
        context.log.info(f"asking again: {ask.job} for group {group} (round {round_})")
    events, cursor = check_events(stuck, changed, context.cursor)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=a.run_key, job_name=a.job, run_config=a.run_config, tags=a.tags) for a in asks
        ],
        skip_reason=None if asks else summary(verdicts, stuck),
        cursor=cursor,
        asset_events=events,
    )


def sweep(instance: dg.DagsterInstance, engine, now: datetime, settings: RecoverySettings) -> list[Verdict]:
    """A group with a registered, unstaged submission is the staging path's (what is left of its drop
    is staging); any other failed drop is the registration path's."""
    verdicts: list[Verdict] = []
    open_rows = open_recoveries(engine)
    unstaged = {u.submission_id: u for u in unstaged_submissions(engine, registered_before=now)}
    staging_groups = {u.group_id for u in unstaged.values()}
    grace = timedelta(minutes=settings.staging_grace_minutes)
    for subject, row in open_rows.items():
        if row.kind == STAGING and subject not in unstaged:
            verdicts.append(Verdict(replace(row, state=CONVERGED)))  # staged since, or no longer registered
        elif row.kind == REGISTRATION and row.group_id in staging_groups:
            verdicts.append(Verdict(replace(row, state=CONVERGED, last_error="registered; staging is followed")))
    for item in unstaged.values():
        if now - item.registered_at < grace:
            continue  # its run, or Dagster's retries of it, may still stage it
        stage_runs = runs(instance, {jobs.SUBMISSION_TAG: item.submission_id})
        group_runs = runs_of_group(instance, item.group_id, since=now - RETRY_PENDING)
        verdict = staging_verdict(item, stage_runs, group_runs, now, settings, last_error(instance, stage_runs))
        if verdict:
            verdicts.append(verdict)
    drops: dict[str, str] = {}  # drop -> its group's id
    for failed in failed_runs(instance, now - LOOKBACK):
        drops.update(batches.drops_of(failed.tags))
    for subject, row in open_rows.items():
        if row.kind == REGISTRATION:
            drops.setdefault(subject, row.group_id)
    for drop, known_group in sorted(drops.items()):
        drop_runs = runs_of_drop(instance, drop, known_group)
        group = known_group or (drop_runs[0].tags.get(jobs.GROUP_TAG, "") if drop_runs else "")
        if not drop_runs or group in staging_groups:
            continue
        group_runs = runs_of_group(instance, group)
        verdict = registration_verdict(drop, drop_runs, group_runs, now, settings, last_error(instance, drop_runs))
        if verdict:
            verdicts.append(verdict)
    return verdicts


def runs(instance: dg.DagsterInstance, tags: dict[str, str], since: datetime | None = None) -> list[RunInfo]:
    """The runs with these tags; with `since`, only those active or updated since then."""
    if since is None:
        return run_infos(instance.get_run_records(filters=dg.RunsFilter(tags=tags)))
    active = dg.RunsFilter(tags=tags, statuses=[dg.DagsterRunStatus(s) for s in ACTIVE])
    recent = dg.RunsFilter(tags=tags, updated_after=since)
    found = {r.dagster_run.run_id: r for f in (active, recent) for r in instance.get_run_records(filters=f)}
    return run_infos(found.values())


def runs_of_drop(instance: dg.DagsterInstance, drop: str, group: str) -> list[RunInfo]:
    """The drop's runs: its single-group runs, and the batch runs it was in, each as seen by the drop."""
    found = runs(instance, {jobs.DROP_TAG: drop})
    if group:
        found += [seen_by(r, group) for r in runs(instance, {jobs.per_group(jobs.DROP_TAG, group): drop})]
    return found


def runs_of_group(instance: dg.DagsterInstance, group: str, since: datetime | None = None) -> list[RunInfo]:
    """The group's runs (any content): single-group runs, and batch runs as seen by the group."""
    found = runs(instance, {jobs.GROUP_TAG: group}, since)
    batched = runs(instance, {jobs.per_group(jobs.GROUP_TAG, group): group}, since)
    return found + [seen_by(r, group) for r in batched]


def seen_by(run: RunInfo, group: str) -> RunInfo:
    """A batch run as one of its groups sees it: the single-group job's config and tags for that
    group (what the sweeper would ask for again), and a success once the group ended well in it,
    whatever became of the run's other groups."""
    run_config, tags = batches.single_group_run(run.tags, run.run_config, group)
    others = {k: v for k, v in run.tags.items() if not k.startswith("health-intake/")}  # dagster/ retry tags
    done = run.tags.get(jobs.per_group(jobs.DONE_TAG, group)) == "true"
    return replace(run, status="SUCCESS" if done else run.status, tags={**others, **tags}, run_config=run_config)


def failed_runs(instance: dg.DagsterInstance, since: datetime) -> list[RunInfo]:
    filters = dg.RunsFilter(
        tags={jobs.PIPELINE_TAG: "intake"},
        statuses=[dg.DagsterRunStatus(s) for s in FAILED],
        updated_after=since,
    )
    return run_infos(instance.get_run_records(filters=filters))


def run_infos(records: Iterable) -> list[RunInfo]:
    infos = []
    for record in records:
        run = record.dagster_run
        ended = datetime.fromtimestamp(record.end_time, UTC) if record.end_time else None
        created = record.create_timestamp.replace(tzinfo=record.create_timestamp.tzinfo or UTC)
        status = run.status.value
        infos.append(RunInfo(run.run_id, run.job_name, status, created, ended, dict(run.tags), run.run_config))
    return infos


def last_error(instance: dg.DagsterInstance, run_infos_: Sequence[RunInfo]) -> str:
    """The newest failed run's first error line: the failing step's, else the run's (a lost process)."""
    failed = [r for r in run_infos_ if r.status in FAILED]
    if not failed:
        return ""
    latest = max(failed, key=lambda r: r.created)
    entries = instance.all_logs(
        latest.run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
    )
    step_first = sorted(entries, key=lambda e: not (e.dagster_event and e.dagster_event.is_step_failure))
    for entry in step_first:
        event = entry.dagster_event
        data = event.step_failure_data if event and event.is_step_failure else None
        if data is not None:
            text = (data.user_failure_data.description if data.user_failure_data else None) or (
                data.error.message if data.error else ""
            )
        else:
            text = (event.message if event else None) or entry.message
        if text:
            return f"run {latest.run_id[:8]}: {text.strip().splitlines()[0]}"[:1000]
    return f"run {latest.run_id[:8]} failed"


# --- what the UI shows ------------------------------------------------------------------------


def check_events(
    stuck: list[Stuck], changed: list[Recovery], cursor: str | None
) -> tuple[list[dg.AssetCheckEvaluation | dg.AssetObservation], str]:
    """The no_stuck_drops verdict whenever it changes (the check keeps its last one), and an inbox
    observation for each drop that changed state: the UI's record of every recovery."""
    digest = hashlib.sha256(json.dumps(sorted(s.subject for s in stuck)).encode()).hexdigest()[:16]
    events: list[dg.AssetCheckEvaluation | dg.AssetObservation] = []
    if digest != (cursor or ""):
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=assets.inbox.key,
                check_name=CHECK_NAME,
                passed=not stuck,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata=stuck_metadata(stuck),
            )
        )
    if changed:
        rows = [
            {
                "drop": r.subject,
                "kind": r.kind,
                "group": r.group_id,
                "state": r.state,
                "rounds": r.rounds,
                "last_error": r.last_error,
            }
            for r in changed
        ]
        events.append(
            dg.AssetObservation(
                asset_key=assets.inbox.key,
                description=f"{len(changed)} drop(s) changed recovery state",
                metadata={"recoveries": dg.MetadataValue.md(jobs.markdown_table(rows[:SHOWN]))},
            )
        )
    return events, digest


def stuck_metadata(stuck: list[Stuck]) -> dict:
    metadata: dict = {"stuck_drops": len(stuck)}
    if stuck:
        rows = [
            {
                "drop": s.subject,
                "group": s.group_id,
                "state": s.state,
                "since": s.since.isoformat(timespec="seconds"),
                "last_error": s.last_error,
            }
            for s in stuck[:SHOWN]
        ]
        metadata["stuck"] = dg.MetadataValue.md(
            jobs.markdown_table(rows) + "\n\nAll of them: `python -m workers.tables drop_recovery`"
        )
    return metadata


def summary(verdicts: list[Verdict], stuck: list[Stuck]) -> str:
    waiting = sum(v.recovery.state == RETRYING for v in verdicts)
    attention = sum(v.recovery.state == NEEDS_ATTENTION for v in verdicts)
    return f"nothing to ask for: {waiting} drop(s) in back-off, {attention} need attention, {len(stuck)} stuck"
