"""The sweeper's records (drop_recovery) and the "no stuck drops" verdict, from the metadata DB.

The Dagster side (orchestrator/defs/intake/sweeper.py) decides from the runs what to ask for
again; this module reads what the database says is unstaged and keeps what the sweeper did, so
an operator can ask the database (`python -m workers.tables drop_recovery`), not the logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from workers.db import DropRecovery, Submission, utcnow
from workers.inbox import group_id

REGISTRATION, STAGING = "registration", "staging"
RETRYING, NEEDS_ATTENTION, CONVERGED = "retrying", "needs_attention", "converged"
OPEN_STATES = (RETRYING, NEEDS_ATTENTION)


@dataclass(frozen=True)
class Unstaged:
    """A registered submission not staged yet: ids only, no keys."""

    submission_id: str
    group_id: str
    registered_at: datetime


@dataclass(frozen=True)
class Recovery:
    """One drop_recovery row as the sweeper writes it."""

    subject: str
    kind: str
    group_id: str
    state: str
    rounds: int
    last_error: str = ""
    last_run_id: str | None = None
    submission_id: str | None = None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class Stuck:
    subject: str
    group_id: str
    state: str
    since: datetime
    last_error: str


def unstaged_submissions(engine: Engine, registered_before: datetime) -> list[Unstaged]:
    with Session(engine) as session:
        rows = session.execute(
            select(Submission.submission_id, Submission.grouping_key, Submission.created_at)
            .where(Submission.status == "registered", Submission.created_at < registered_before)
            .order_by(Submission.id)
        ).all()
    return [Unstaged(sid, group_id(key), aware(created)) for sid, key, created in rows]


def open_recoveries(engine: Engine) -> dict[str, Recovery]:
    with Session(engine) as session:
        rows = session.scalars(select(DropRecovery).where(DropRecovery.state.in_(OPEN_STATES))).all()
        return {row.subject: as_recovery(row) for row in rows}


def save(engine: Engine, recoveries: Iterable[Recovery], now: datetime | None = None) -> list[Recovery]:
    """Upsert by subject; returns the ones whose state changed (new rows included)."""
    now = now or utcnow()
    changed = []
    with Session(engine) as session, session.begin():
        for recovery in recoveries:
            row = session.scalar(select(DropRecovery).where(DropRecovery.subject == recovery.subject))
            if row is None:
                if recovery.state == CONVERGED:
                    continue  # converged before the sweeper took it up: nothing to record
                row = DropRecovery(subject=recovery.subject, first_seen_at=now, state="")
                session.add(row)
            if row.state != recovery.state:
                changed.append(recovery)
                row.converged_at = now if recovery.state == CONVERGED else None
            row.kind, row.group_id, row.state, row.rounds = (
                recovery.kind,
                recovery.group_id,
                recovery.state,
                recovery.rounds,
            )
            row.submission_id = recovery.submission_id or row.submission_id
            row.last_run_id = recovery.last_run_id or row.last_run_id
            row.last_error = (recovery.last_error or row.last_error or "")[:1000]
            row.next_attempt_at, row.updated_at = recovery.next_attempt_at, now
    return changed


def stuck_drops(engine: Engine, now: datetime, stuck_after: timedelta) -> list[Stuck]:
    """Drops past their deadline: retries spent, a recovery going on for longer than
    `stuck_after`, or a submission registered that long ago and still not staged."""
    deadline = now - stuck_after
    stuck = []
    with Session(engine) as session:
        for row in session.scalars(select(DropRecovery).where(DropRecovery.state.in_(OPEN_STATES))):
            if row.state == NEEDS_ATTENTION or aware(row.first_seen_at) < deadline:
                stuck.append(Stuck(row.subject, row.group_id, row.state, aware(row.first_seen_at), row.last_error))
    taken = {s.subject for s in stuck}
    for unstaged in unstaged_submissions(engine, deadline):
        if unstaged.submission_id not in taken:
            stuck.append(Stuck(unstaged.submission_id, unstaged.group_id, "unstaged", unstaged.registered_at, ""))
    return stuck


def as_recovery(row: DropRecovery) -> Recovery:
    return Recovery(
        subject=row.subject,
        kind=row.kind,
        group_id=row.group_id,
        state=row.state,
        rounds=row.rounds,
        last_error=row.last_error,
        last_run_id=row.last_run_id,
        submission_id=row.submission_id,
        next_attempt_at=aware(row.next_attempt_at) if row.next_attempt_at else None,
    )


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes for what was stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)
