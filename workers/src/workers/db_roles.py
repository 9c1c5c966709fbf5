"""Metadata-DB roles: which process may do what to which table, declared once (Postgres only).

The migrations owner (METADATA_DB_URL: the metadata DB's admin, which runs `alembic upgrade head`
and so owns the tables) applies this table after every migration; every other process logs in
as its own role, whose URL is METADATA_<ROLE>_DB_URL (for example METADATA_STAGER_DB_URL). The
launcher hands a worker its role's URL as the worker's METADATA_DB_URL (`db_url_for`). Dev mode's
SQLite has no roles: there, one METADATA_DB_URL serves everything.

    python -m workers.db_roles apply   # as the owner: logins, passwords, exactly these grants
    python -m workers.db_roles check   # as each role: every grant works, everything else is refused

`apply` takes each role's login name and password from its URL, revokes whatever else a role
holds (table, sequence and schema privileges, role memberships, default privileges), and leaves a
future table closed to every role until this table names it. `check` changes nothing: each probe
touches no row (`... WHERE false`) inside a transaction that is rolled back.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from workers.db import make_engine
from workers.settings import SettingsError, load_metadata_db_url

PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
SCHEMA = "public"

# role -> table -> privileges. INSERT brings USAGE on the table's id sequence, and SELECT where
# an insert reads back its new id (INSERT ... RETURNING needs SELECT).
DB_GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    # The Dagster daemon's sensors: the inbox sensor records keys that form no group and counts
    # what is on record; the sweeper finds registered submissions left unstaged and keeps
    # drop_recovery (it never deletes a row); the feed freshness sensor reads when each
    # submitter's submissions of each type were registered.
    "sensor": {
        "inbox_rejection": ("SELECT", "INSERT", "UPDATE"),
        "submission": ("SELECT",),
        "drop_recovery": ("SELECT", "INSERT", "UPDATE"),
    },
    "heartbeat": {"bootstrap_heartbeat": ("SELECT", "INSERT")},
    # Layouts and feeds are retired, never deleted.
    "layouts": {"layout_registry": ("SELECT", "INSERT", "UPDATE"), "feed_registry": ("SELECT", "INSERT", "UPDATE")},
    "classifier": {"layout_registry": ("SELECT",)},
    "registrar": {
        # Run by hand, the registrar classifies the group first.
        "layout_registry": ("SELECT",),
        "submission": ("SELECT", "INSERT", "UPDATE"),
        "submission_file": ("SELECT", "INSERT"),
        "inbox_object": ("SELECT", "INSERT"),
        "inbox_rejection": ("SELECT", "INSERT", "UPDATE"),
        # The manifest's locked version; a recorded version is never rewritten.
        "raw_object": ("SELECT", "INSERT"),
    },
    # Marks files, submissions and removed inbox objects, and records each raw copy's locked
    # version; it deletes no row, and rewrites no recorded version. Reads the group's rejections
    # for the partner's receipt.
    "stager": {
        "submission": ("SELECT", "UPDATE"),
        "submission_file": ("SELECT", "UPDATE"),
        "inbox_object": ("SELECT", "UPDATE"),
        "inbox_rejection": ("SELECT",),
        "raw_object": ("SELECT", "INSERT"),
    },
    # The raw zone audit (recorded versions against the store), and the no_stuck_drops and
    # feed_* checks when they are run from the UI.
    "auditor": {
        "submission": ("SELECT",),
        "submission_file": ("SELECT",),
        "raw_object": ("SELECT",),
        "drop_recovery": ("SELECT",),
    },
}
# The Dagster daemon's own role (the inbox sensor): its METADATA_DB_URL.
SENSOR_DB_ROLE = "sensor"
LOGIN_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def url_variable(db_role: str) -> str:
    return f"METADATA_{db_role.upper()}_DB_URL"


def db_url_for(db_role: str, env: Mapping[str, str]) -> str | None:
    """The role's own metadata-DB URL; None when unset (dev mode: one METADATA_DB_URL for all)."""
    if db_role not in DB_GRANTS:
        raise SettingsError(f"{db_role!r} is no metadata-DB role (workers.db_roles.DB_GRANTS)")
    return env.get(url_variable(db_role), "").strip() or None


def required_url(db_role: str, env: Mapping[str, str]) -> str:
    url = db_url_for(db_role, env)
    if url is None:
        raise SettingsError(f"{url_variable(db_role)} is not set: every metadata-DB role needs its own URL")
    return url


@dataclass(frozen=True)
class Login:
    name: str
    password: str | None = None

    @classmethod
    def of(cls, db_role: str, env: Mapping[str, str]) -> Login:
        url = sa.make_url(required_url(db_role, env))
        if url.get_backend_name() != "postgresql" or not url.username:
            raise SettingsError(f"{url_variable(db_role)} must be a postgresql URL naming its user")
        if not LOGIN_NAME.fullmatch(url.username):
            raise SettingsError(f"{url_variable(db_role)} names a user that is not a plain lower-case name")
        return cls(url.username, url.password)


# --- apply -----------------------------------------------------------------------------------


def apply(engine: Engine, env: Mapping[str, str]) -> dict[str, Login]:
    """Make every role exactly its grants, in one transaction: no moment with more, or half of them."""
    logins = {role: Login.of(role, env) for role in DB_GRANTS}
    with engine.begin() as conn:
        tables = existing_tables(conn)
        missing = sorted({table for grants in DB_GRANTS.values() for table in grants} - set(tables))
        if missing:
            raise SettingsError(f"tables {', '.join(missing)} do not exist: run `alembic upgrade head` first")
        close_to_public(conn, tables)
        for role, login in logins.items():
            ensure_login(conn, login)
            revoke_everything(conn, login.name)
            grant(conn, login.name, DB_GRANTS[role])
    return logins


def existing_tables(conn: Connection) -> list[str]:
    return sorted(sa.inspect(conn).get_table_names(schema=SCHEMA))


def column_names(conn: Connection, table: str) -> list[str]:
    return [column["name"] for column in sa.inspect(conn).get_columns(table, schema=SCHEMA)]


def quoted(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def close_to_public(conn: Connection, tables: list[str]) -> None:
    # Postgres 15 already keeps PUBLIC out of the schema and of new tables; stated here so that a
    # wider default set by hand, or an older server, is undone too.
    conn.execute(sa.text(f"REVOKE CREATE ON SCHEMA {SCHEMA} FROM PUBLIC"))
    for kind in ("TABLES", "SEQUENCES"):
        conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} REVOKE ALL ON {kind} FROM PUBLIC"))
    for table in tables:
        conn.execute(sa.text(f"REVOKE ALL ON TABLE {SCHEMA}.{quoted(conn, table)} FROM PUBLIC"))


def ensure_login(conn: Connection, login: Login) -> None:
    name = quoted(conn, login.name)
    if conn.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :name"), {"name": login.name}) is None:
        conn.execute(sa.text(f"CREATE ROLE {name}"))
    conn.execute(
        sa.text(
            f"ALTER ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT "
            "PASSWORD :password"
        ),
        {"password": login.password},
    )


def revoke_everything(conn: Connection, login_name: str) -> None:
    name = quoted(conn, login_name)
    for statement in (
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {SCHEMA} FROM {name}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {SCHEMA} FROM {name}",
        f"REVOKE ALL ON SCHEMA {SCHEMA} FROM {name}",
        # Default privileges of the owner (the role running this): a future table stays closed.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} REVOKE ALL ON TABLES FROM {name}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} REVOKE ALL ON SEQUENCES FROM {name}",
    ):
        conn.execute(sa.text(statement))
    memberships = conn.scalars(
        sa.text(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = :name"
        ),
        {"name": login_name},
    ).all()
    for group in memberships:
        conn.execute(sa.text(f"REVOKE {quoted(conn, group)} FROM {name}"))


def grant(conn: Connection, login_name: str, grants: Mapping[str, tuple[str, ...]]) -> None:
    name = quoted(conn, login_name)
    conn.execute(sa.text(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {name}"))
    for table, privileges in grants.items():
        conn.execute(sa.text(f"GRANT {', '.join(privileges)} ON TABLE {SCHEMA}.{quoted(conn, table)} TO {name}"))
        if "INSERT" in privileges:
            conn.execute(sa.text(f"GRANT USAGE ON SEQUENCE {id_sequence(conn, table)} TO {name}"))


def id_sequence(conn: Connection, table: str) -> str:
    """The sequence behind the table's serial id, as Postgres names it (already quoted)."""
    return conn.scalar(sa.text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": f"{SCHEMA}.{table}"})


# --- check -----------------------------------------------------------------------------------

# Each probe reaches the privilege check and touches no row.
PROBE_SQL = {
    "SELECT": "SELECT * FROM {table} WHERE false",
    "INSERT": "INSERT INTO {table} ({column}) SELECT NULL WHERE false",
    "UPDATE": "UPDATE {table} SET {column} = NULL WHERE false",
    "DELETE": "DELETE FROM {table} WHERE false",
    "CREATE": "CREATE TABLE {schema}._db_roles_check (id integer)",
}


@dataclass(frozen=True)
class Probe:
    privilege: str  # SELECT | INSERT | UPDATE | DELETE, USAGE (its id sequence), CREATE (a table beside it)
    table: str
    allowed: bool
    outcome: str  # "allowed" | "refused" | the unexpected error's class


def expected(db_role: str, privilege: str, table: str) -> bool:
    if privilege == "CREATE":
        return False
    granted = DB_GRANTS[db_role].get(table, ())
    return "INSERT" in granted if privilege == "USAGE" else privilege in granted


def attempt(conn: Connection, statement: str) -> str:
    """Run one probe in a savepoint: "allowed", "refused" (insufficient privilege), or the error."""
    savepoint = conn.begin_nested()
    try:
        conn.execute(sa.text(statement))
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        return "refused" if getattr(exc.orig, "pgcode", None) == "42501" else type(exc.orig).__name__
    savepoint.rollback()
    return "allowed"


def probe_table(conn: Connection, table: str) -> dict[str, str]:
    name = f"{SCHEMA}.{quoted(conn, table)}"
    columns = column_names(conn, table)
    column = "id" if "id" in columns else quoted(conn, columns[0])
    outcomes = {
        privilege: attempt(conn, PROBE_SQL[privilege].format(table=name, column=column)) for privilege in PRIVILEGES
    }
    if "id" in columns:
        outcomes["USAGE"] = sequence_usage(conn, id_sequence(conn, table))
    return outcomes


def sequence_usage(conn: Connection, sequence: str) -> str:
    # Asked of the server for the role itself: calling nextval would spend an id, and sequences
    # ignore a rollback.
    usable = conn.scalar(sa.text("SELECT has_sequence_privilege(:sequence, 'USAGE')"), {"sequence": sequence})
    return "allowed" if usable else "refused"


def check_role(engine: Engine, db_role: str) -> list[Probe]:
    """Every privilege on every table, and creating a table, as the role; all rolled back."""
    probes = []
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            for table in existing_tables(conn):
                for privilege, outcome in probe_table(conn, table).items():
                    probes.append(Probe(privilege, table, expected(db_role, privilege, table), outcome))
            created = attempt(conn, PROBE_SQL["CREATE"].format(schema=SCHEMA))
            probes.append(Probe("CREATE", SCHEMA, False, created))
        finally:
            transaction.rollback()
    return probes


def check(env: Mapping[str, str]) -> dict[str, list[Probe]]:
    report = {}
    for db_role in DB_GRANTS:
        engine = make_engine(required_url(db_role, env))
        try:
            report[db_role] = check_role(engine, db_role)
        finally:
            engine.dispose()
    return report


# --- command line ----------------------------------------------------------------------------


def admin_engine(env: Mapping[str, str]) -> Engine:
    url = load_metadata_db_url(env)
    if sa.make_url(url).get_backend_name() != "postgresql":
        raise SettingsError("METADATA_DB_URL is not Postgres: SQLite (dev mode) has no roles to apply")
    # make_engine: hide_parameters (a failing ALTER ROLE must not print the password it was
    # given), and connecting retried: a set-up step re-run by `docker-compose up -d` may start
    # before the database's name resolves again (seen on Podman).
    return make_engine(url)


def print_check(report: Mapping[str, list[Probe]]) -> int:
    wrong = 0
    for db_role, probes in report.items():
        for p in probes:
            wanted = "allowed" if p.allowed else "refused"
            ok = p.outcome == wanted
            wrong += not ok
            print(
                f"{'ok ' if ok else 'BAD'} {db_role:<10} {p.privilege:<6} {p.table:<20} {p.outcome} (expected {wanted})"
            )
    if wrong:
        print(f"db_roles: {wrong} probe(s) not as granted", file=sys.stderr)
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.db_roles", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("apply", help="as the owner: create or update every role and its grants")
    commands.add_parser("check", help="as each role: prove every grant and every refusal, changing nothing")
    args = parser.parse_args(argv)
    try:
        if args.command == "apply":
            engine = admin_engine(os.environ)
            try:
                for role, login in apply(engine, os.environ).items():
                    tables = ", ".join(f"{t} ({' '.join(p)})" for t, p in DB_GRANTS[role].items())
                    print(f"role {role}: login {login.name}: {tables}")
            finally:
                engine.dispose()
            return 0
        return 1 if print_check(check(os.environ)) else 0
    except SettingsError as exc:
        print(f"db_roles: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
