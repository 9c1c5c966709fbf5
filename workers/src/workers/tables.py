"""Prints the newest rows of a metadata table, for operators: `python -m workers.tables TABLE`.

Reads METADATA_DB_URL like the workers do, so it needs no database client installed.
"""

from __future__ import annotations

import argparse
import sys

import sqlalchemy as sa

from workers.db import Base, make_engine
from workers.runtime import describe_failure
from workers.settings import load_settings


def newest_rows(engine: sa.Engine, table_name: str, limit: int) -> tuple[list[str], list[tuple]]:
    table = Base.metadata.tables[table_name]
    order = [c.desc() for c in table.primary_key.columns]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table).order_by(*order).limit(limit)).all()
    return [c.name for c in table.columns], [tuple(r) for r in rows]


def render(columns: list[str], rows: list[tuple]) -> str:
    cells = [columns] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(value.ljust(w) for value, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.tables", description=__doc__)
    parser.add_argument("table", choices=sorted(Base.metadata.tables))
    parser.add_argument("--limit", type=int, default=20, help="newest N rows (default 20)")
    args = parser.parse_args(argv)
    settings = None
    try:
        settings = load_settings()
        engine = make_engine(settings.metadata_db_url)
        columns, rows = newest_rows(engine, args.table, args.limit)
    except Exception as exc:  # noqa: BLE001 - one line for the operator
        print(f"tables: error: {describe_failure(exc, settings)}", file=sys.stderr)
        return 1
    print(render(columns, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
