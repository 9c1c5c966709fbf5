"""Opening a metadata-DB connection is retried, boundedly; nothing else is. Against real refusals
(port 1, where nothing listens), a real Postgres and a real SQLite file."""

import time

import psycopg2
import pytest
import sqlalchemy as sa

from tests.services import migrate
from workers.db import connect_with_retry, is_transient, make_engine
from workers.settings import DbConnectSettings

NOWHERE = {"host": "127.0.0.1", "port": 1, "dbname": "metadata", "connect_timeout": 10}


def test_connecting_gives_up_at_the_deadline_with_attempts_left(capfd):
    patient = DbConnectSettings(attempts=1000, backoff_seconds=0.05)
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError) as excinfo:
        connect_with_retry(lambda: psycopg2.connect(**NOWHERE), psycopg2.OperationalError, patient, deadline_seconds=1)

    assert time.monotonic() - started < 1.5
    (note,) = excinfo.value.__notes__
    attempts = int(note.removeprefix("gave up after ").removesuffix(" connection attempts"))
    assert 2 <= attempts < 1000
    retries = capfd.readouterr().err.splitlines()
    assert len(retries) == attempts - 1
    assert retries[0].startswith("metadata database: connection attempt 1/1000 failed (psycopg2.OperationalError)")


def test_a_single_attempt_is_not_retried(capfd):
    once = DbConnectSettings(attempts=1, backoff_seconds=5)
    with pytest.raises(psycopg2.OperationalError) as excinfo:
        connect_with_retry(lambda: psycopg2.connect(**NOWHERE), psycopg2.OperationalError, once)

    assert excinfo.value.__notes__ == ["gave up after 1 connection attempt"]
    assert capfd.readouterr().err == ""


def test_a_statement_that_loses_its_connection_is_not_retried(postgres_url, capfd):
    engine = make_engine(postgres_url, DbConnectSettings(attempts=5, backoff_seconds=0.01))
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError) as excinfo:
        conn.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))
    engine.dispose()

    assert excinfo.value.connection_invalidated
    assert "connection attempt" not in capfd.readouterr().err


def test_sqlite_is_not_retried(tmp_path, capfd):
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'metadata.db'}", DbConnectSettings(5, 0.01))
    with pytest.raises(sa.exc.OperationalError, match="unable to open database file"):
        engine.connect()

    assert "connection attempt" not in capfd.readouterr().err


def test_a_database_that_answers_and_refuses_is_not_retried(postgres_url, capfd):
    # A real refusal from the real server: the database does not exist. Waiting will not create it,
    # so the operator hears at once instead of after the whole backoff.
    missing = postgres_url.rsplit("/", 1)[0] + "/no_such_database_here"
    engine = make_engine(missing, DbConnectSettings(attempts=5, backoff_seconds=1))
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError, match="does not exist") as excinfo:
        engine.connect()
    engine.dispose()

    assert time.monotonic() - started < 1
    assert excinfo.value.orig.__notes__ == ["not retried: the server answered and refused"]
    assert "connection attempt" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ('connection to server at "127.0.0.1", port 1 failed: Connection refused', True),
        ("timeout expired", True),
        ('FATAL:  password authentication failed for user "intake"', False),
        ('FATAL:  database "metadata" does not exist', False),
        ("FATAL:  the database system is starting up", True),
        ("FATAL:  sorry, too many connections for role", True),
    ],
)
def test_which_connection_failures_are_worth_a_retry(message, transient):
    assert is_transient(psycopg2.OperationalError(message)) is transient


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_failed_statement_never_carries_its_bound_values(dialect, tmp_path, request):
    """An object key (which can name a member) bound into a statement that fails stays out of the error."""
    url = f"sqlite:///{tmp_path / 'm.db'}" if dialect == "sqlite" else request.getfixturevalue("postgres_url")
    migrate(url)
    engine = make_engine(url)
    row = {"key": "inbox/acme/unknown/SENTINEL-Jane-Roe/x.csv", "etag": "e", "size": 1, "reason": "r"}
    insert = sa.text(
        "INSERT INTO inbox_rejection (key, etag, size_bytes, reason, first_seen_at, last_seen_at) "
        "VALUES (:key, :etag, :size, :reason, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    )
    with engine.begin() as conn:
        conn.execute(insert, row)
    with pytest.raises(sa.exc.IntegrityError) as excinfo, engine.begin() as conn:
        conn.execute(insert, row)  # the same key and ETag again: a unique violation
    engine.dispose()
    assert "SENTINEL" not in str(excinfo.value)
    assert "SQL parameters hidden" in str(excinfo.value)
