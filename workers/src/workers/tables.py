"""Prints the newest rows of a metadata table, for operators: `python -m workers.tables TABLE`;
`python -m workers.tables --find ID` prints the key behind a group id (g-...) or a file id (f-...)
that the Dagster UI shows in place of keys.

Reads METADATA_DB_URL like the workers do, so it needs no database client installed.
"""

from __future__ import annotations

import argparse
import sys

import sqlalchemy as sa

from workers.db import Base, make_engine
from workers.inbox import file_id, group_id
from workers.runtime import describe_failure
from workers.settings import load_settings

# Where the keys behind each kind of id are kept: table -> column.
GROUP_KEYS = {"submission": "grouping_key", "inbox_rejection": "grouping_key"}
FILE_KEYS = {"submission_file": "inbox_key", "inbox_object": "key", "inbox_rejection": "key"}


def newest_rows(engine: sa.Engine, table_name: str, limit: int) -> tuple[list[str], list[tuple]]:
    table = Base.metadata.tables[table_name]
    order = [c.desc() for c in table.primary_key.columns]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table).order_by(*order).limit(limit)).all()
    return [c.name for c in table.columns], [tuple(r) for r in rows]


def find(engine: sa.Engine, object_id: str) -> list[tuple]:
    """(table, row id, key) of every row whose key has this id. Ids are digests, so every key
    is read and digested: a scan, fine for an operator's look-up, not for a hot path."""
    digest, where = (group_id, GROUP_KEYS) if object_id.startswith("g-") else (file_id, FILE_KEYS)
    found = []
    with engine.connect() as conn:
        for table_name, column_name in where.items():
            table = Base.metadata.tables[table_name]
            column = table.c[column_name]
            rows = conn.execute(sa.select(table.c.id, column).where(column.is_not(None)).order_by(table.c.id))
            found += [(table_name, row_id, key) for row_id, key in rows if digest(key) == object_id]
    return found


def render(columns: list[str], rows: list[tuple]) -> str:
    cells = [columns] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(value.ljust(w) for value, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.tables", description=__doc__)
    parser.add_argument("table", nargs="?", choices=sorted(Base.metadata.tables))
    parser.add_argument("--limit", type=int, default=20, help="newest N rows (default 20)")
    parser.add_argument("--find", metavar="ID", help="the rows whose key has this group (g-...) or file (f-...) id")
    args = parser.parse_args(argv)
    if not args.table and not args.find:
        parser.error("name a table, or --find ID")
    settings = None
    try:
        settings = load_settings()
        engine = make_engine(settings.metadata_db_url)
        if args.find:
            columns, rows = ["table", "id", "key"], find(engine, args.find.strip())
        else:
            columns, rows = newest_rows(engine, args.table, args.limit)
    except Exception as exc:  # noqa: BLE001 - one line for the operator
        print(f"tables: error: {describe_failure(exc, settings)}", file=sys.stderr)
        return 1
    print(render(columns, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
