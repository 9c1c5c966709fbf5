"""Metadata database: the schema Alembic migrates, and how workers connect to it."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from workers.settings import DbConnectSettings, load_db_connect_settings

# Stable constraint names, so later migrations can alter constraints by name on both dialects.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class BootstrapHeartbeat(Base):
    __tablename__ = "bootstrap_heartbeat"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    message: Mapped[str] = mapped_column(String(200))


# Per wait, and for all the waits of one connection together (plus one connect_timeout at most).
MAX_WAIT_SECONDS = 8.0
CONNECT_DEADLINE_SECONDS = 60.0
T = TypeVar("T")


def make_engine(url: str, connecting: DbConnectSettings | None = None) -> Engine:
    """An engine whose new connections are retried per `connecting` (default: DB_CONNECT_* from the environment)."""
    connecting = connecting or load_db_connect_settings()  # read on SQLite too, so a bad value never hides
    # A blackholed database host fails within seconds instead of hanging a worker for minutes.
    connect_args = {"connect_timeout": 10} if url.startswith("postgresql") else {}
    # hide_parameters: a statement's bound values (object keys, which can name a member) never
    # travel in an error's text into logs, the event log or a failed tick.
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args, hide_parameters=True)
    event.listen(engine, "handle_error", _first_line_only)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)  # a local file: nothing to wait for
    else:
        _retry_connecting(engine, connecting)
    return engine


def _first_line_only(context: ExceptionContext) -> None:
    """hide_parameters keeps bound values out of SQLAlchemy's part of an error; the driver's part
    can quote them too (Postgres: "DETAIL: Key (key, etag)=(inbox/...) already exists"): it keeps
    its first line, which names the constraint or the cause."""
    driver_error = context.original_exception
    lines = str(driver_error).strip().splitlines()
    if len(lines) > 1:
        driver_error.args = (lines[0],)
        wrapper = context.sqlalchemy_exception  # its message was built from the driver's whole text
        if wrapper is not None:
            wrapper.args = (f"({type(driver_error).__module__}.{type(driver_error).__name__}) {lines[0]}",)


def _retry_connecting(engine: Engine, connecting: DbConnectSettings) -> None:
    # Only opening a connection is retried (the pool's, pre-ping's reconnect included): nothing
    # has been sent on it yet, so a retry cannot repeat a statement or half a transaction.
    refused = engine.dialect.loaded_dbapi.OperationalError

    @event.listens_for(engine, "do_connect")
    def connect(dialect, _record, cargs, cparams):
        return connect_with_retry(lambda: dialect.connect(*cargs, **cparams), refused, connecting, is_transient)


# A server that answers and refuses (wrong password, no such database or role) will refuse again:
# those fail at once. These refusals pass with time, so they are retried like a silent server.
TRANSIENT_REFUSALS = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "too many connections",
    "remaining connection slots are reserved",
)


def is_transient(exc: Exception) -> bool:
    """Retry a connection that failed before the server answered, or that it refused for now."""
    message = str(exc).lower()
    if "fatal:" not in message:
        return True  # refused, timed out, unresolvable: nothing answered yet
    return any(reason in message for reason in TRANSIENT_REFUSALS)


def connect_with_retry(
    connect: Callable[[], T],
    refused: type[Exception],
    connecting: DbConnectSettings,
    transient: Callable[[Exception], bool] = lambda _exc: True,
    deadline_seconds: float = CONNECT_DEADLINE_SECONDS,
) -> T:
    """`connect()`, retried on `refused` (when `transient` says so) with capped exponential backoff
    and jitter; the last error propagates, noting how many attempts were made. One stderr line per retry names the
    attempt and the error class, never the URL or the server's message."""
    give_up_at = time.monotonic() + deadline_seconds
    attempt = 1
    while True:
        try:
            return connect()
        except refused as exc:
            if not transient(exc):
                exc.add_note("not retried: the server answered and refused")
                raise
            ceiling = min(MAX_WAIT_SECONDS, connecting.backoff_seconds * 2 ** min(attempt - 1, 30))
            wait = ceiling * random.uniform(0.5, 1)  # jitter: workers started together do not retry together
            if attempt >= connecting.attempts or time.monotonic() + wait > give_up_at:
                exc.add_note(f"gave up after {attempt} connection attempt{'s' if attempt > 1 else ''}")
                raise
            error = f"{type(exc).__module__}.{type(exc).__qualname__}"
            print(
                f"metadata database: connection attempt {attempt}/{connecting.attempts} failed ({error}); "
                f"retrying in {wait:.2f}s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(wait)
            attempt += 1


@contextmanager
def metadata_engine(url: str) -> Iterator[Engine]:
    """An engine for one worker run, disposed when the run ends."""
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Foreign keys are off by default in SQLite; a wait beats "database is locked" under a
    # sensor and a worker writing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class LayoutRegistry(Base):
    """One row per layout id, synced from the versioned layout_definitions.json; retired, never deleted."""

    __tablename__ = "layout_registry"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    layout_id: Mapped[str] = mapped_column(String(200), unique=True)
    submitter_id: Mapped[str] = mapped_column(String(200))  # "*" matches every submitter
    filename_pattern: Mapped[str] = mapped_column(String(500))
    file_type: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    synced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FeedRegistry(Base):
    """One row per feed id, synced from the versioned feed_definitions.json; retired, never deleted."""

    __tablename__ = "feed_registry"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    feed_id: Mapped[str] = mapped_column(String(63), unique=True)
    submitter_id: Mapped[str] = mapped_column(String(200))
    file_type: Mapped[str] = mapped_column(String(200))
    cadence: Mapped[str] = mapped_column(String(200))  # cron, UTC: each tick is a due time
    grace: Mapped[str] = mapped_column(String(40))  # ISO-8601 duration
    early: Mapped[str | None] = mapped_column(String(40))  # ISO-8601 duration; None: since the previous due time
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    synced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Submission(Base):
    """A complete group, registered once per distinct content (grouping_key + content_hash)."""

    __tablename__ = "submission"
    __table_args__ = (UniqueConstraint("grouping_key", "content_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    submission_id: Mapped[str] = mapped_column(String(64), unique=True)
    submitter_id: Mapped[str] = mapped_column(String(200), index=True)
    file_type: Mapped[str] = mapped_column(String(200))
    grouping_key: Mapped[str] = mapped_column(String(1200), index=True)
    grouping_method: Mapped[str] = mapped_column(String(40))
    content_hash: Mapped[str] = mapped_column(String(64))
    raw_prefix: Mapped[str] = mapped_column(String(1200))
    manifest_key: Mapped[str] = mapped_column(String(1200))
    file_count: Mapped[int] = mapped_column(Integer)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    # registered -> staged, or duplicate (never staged); manifest_written_at is set once the manifest exists.
    status: Mapped[str] = mapped_column(String(40), default="registered")
    previous_submission_id: Mapped[str | None] = mapped_column(String(64))
    # SHA-256 over the sorted file SHA-256s: the same bytes delivered again under a new drop id
    # share it, and that submission is recorded as a duplicate of the first, not staged twice.
    content_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    duplicate_of: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    manifest_written_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    staged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SubmissionFile(Base):
    """A data file of a submission; an inbox object version (key + ETag) is registered at most once."""

    __tablename__ = "submission_file"
    __table_args__ = (UniqueConstraint("inbox_key", "etag"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    submission_id: Mapped[str] = mapped_column(ForeignKey("submission.submission_id"), index=True)
    inbox_key: Mapped[str] = mapped_column(String(1200))
    raw_key: Mapped[str] = mapped_column(String(1200), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    etag: Mapped[str] = mapped_column(String(200))
    file_type: Mapped[str] = mapped_column(String(200))
    layout_id: Mapped[str | None] = mapped_column(String(200))
    layout_version: Mapped[int | None] = mapped_column(Integer)
    classification: Mapped[str] = mapped_column(String(40))  # classified | unknown | ambiguous
    classification_detail: Mapped[str] = mapped_column(String(1000), default="")
    staged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class InboxObject(Base):
    """Every object a submission's registration observed in its group (data files and the marker).

    The marker may be observed by several submissions of one group (late files), so the
    uniqueness is per submission; "registered once" is submission_file's (inbox_key, etag).
    """

    __tablename__ = "inbox_object"
    __table_args__ = (UniqueConstraint("submission_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    submission_id: Mapped[str] = mapped_column(ForeignKey("submission.submission_id"), index=True)
    key: Mapped[str] = mapped_column(String(1200))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str] = mapped_column(String(200))
    last_modified: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    role: Mapped[str] = mapped_column(String(20))  # data | marker
    observed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The exact version the stager deleted (a versioned bucket keeps every version otherwise).
    removed_version_id: Mapped[str | None] = mapped_column(String(200))


class RawObject(Base):
    """One version in the raw zone, as written and locked: a manifest or a staged data file.

    Written in the same transaction that marks the manifest written or the file staged, so a
    "staged" file always has the version the audit holds it to. The store keeps that version
    (Object Lock) until `retain_until`; the audit compares what the store holds now with it.
    """

    __tablename__ = "raw_object"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    submission_id: Mapped[str] = mapped_column(ForeignKey("submission.submission_id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # manifest | data
    key: Mapped[str] = mapped_column(String(1200), unique=True)
    version_id: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    retention_mode: Mapped[str] = mapped_column(String(20))  # GOVERNANCE | COMPLIANCE
    retain_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class InboxRejection(Base):
    """An inbox object the platform did not register, and why: operators query this, not the logs."""

    __tablename__ = "inbox_rejection"
    __table_args__ = (UniqueConstraint("key", "etag"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(1200))
    etag: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    grouping_key: Mapped[str | None] = mapped_column(String(1200))
    reason: Mapped[str] = mapped_column(String(500))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DropRecovery(Base):
    """What the sweeper did for a drop that did not converge by itself, and where it stands.

    One row per drop the sweeper took up: a registration run that failed with no retry left
    (`subject` is the drop's run key: group id @ content) or a registered submission left
    unstaged with no run to stage it (`subject` is the submission id). Rows are kept after they
    converge: the table is also the record of every recovery.
    """

    __tablename__ = "drop_recovery"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # registration | staging
    group_id: Mapped[str] = mapped_column(String(64), index=True)
    submission_id: Mapped[str | None] = mapped_column(String(64))
    # retrying -> converged, or needs_attention (rounds spent) -> converged once a later run succeeds.
    state: Mapped[str] = mapped_column(String(20))
    rounds: Mapped[int] = mapped_column(Integer, default=0)  # runs the sweeper asked for
    last_run_id: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str] = mapped_column(String(1000), default="")
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    converged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
