"""Layout registry sync: loads the versioned layout_definitions.json into layout_registry, and
feed_definitions.json (the expected deliveries, workers.feeds) into feed_registry.

Idempotent. A layout missing from the file is retired (kept, marked inactive), never deleted,
so every past classification stays explainable. Changing a layout without bumping its version
is refused: submission_file rows name the layout version they were classified with.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from workers import feeds
from workers.db import LayoutRegistry, metadata_engine, utcnow
from workers.runtime import Metadata, WorkerError, run_worker
from workers.settings import Settings

FIELDS = ("layout_id", "submitter_id", "filename_pattern", "file_type", "version")


@dataclass(frozen=True)
class Layout:
    layout_id: str
    submitter_id: str
    filename_pattern: str
    file_type: str
    version: int


def packaged_definitions() -> str:
    return resources.files("workers").joinpath("layout_definitions.json").read_text()


def parse_definitions(text: str) -> tuple[int, list[Layout]]:
    """The registry version and its layouts; WorkerError naming the first problem."""
    try:
        body = json.loads(text)
        registry_version = int(body["registry_version"])
        entries = body["layouts"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkerError(f"layout definitions are malformed: {type(exc).__name__} {exc}") from None
    layouts = [_layout(i, entry) for i, entry in enumerate(entries)]
    ids = [layout.layout_id for layout in layouts]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise WorkerError(f"layout definitions repeat layout_id {', '.join(duplicates)}")
    return registry_version, layouts


def _layout(index: int, entry: Any) -> Layout:
    if not isinstance(entry, dict) or set(FIELDS) - set(entry):
        raise WorkerError(f"layout #{index} must have the fields {', '.join(FIELDS)}")
    if not all(isinstance(entry[f], str) and entry[f].strip() for f in FIELDS if f != "version"):
        raise WorkerError(f"layout #{index} ({entry.get('layout_id')}) has an empty or non-text field")
    if not isinstance(entry["version"], int) or entry["version"] < 1:
        raise WorkerError(f"layout {entry['layout_id']} needs an integer version >= 1")
    return Layout(**{f: entry[f] for f in FIELDS})


def sync(engine: Engine, layouts: Sequence[Layout]) -> dict[str, int]:
    """Make layout_registry's active rows equal the definitions; counts of what changed."""
    counts = {"added": 0, "changed": 0, "retired": 0, "unchanged": 0}
    wanted = {layout.layout_id: layout for layout in layouts}
    with Session(engine) as session, session.begin():
        rows = {row.layout_id: row for row in session.scalars(select(LayoutRegistry))}
        for layout_id, layout in wanted.items():
            counts[_apply(session, rows.get(layout_id), layout)] += 1
        for layout_id, row in rows.items():
            if layout_id not in wanted and row.active:
                row.active, row.retired_at = False, utcnow()
                counts["retired"] += 1
    return counts


def _apply(session: Session, row: LayoutRegistry | None, layout: Layout) -> str:
    if row is None:
        session.add(LayoutRegistry(**vars(layout), active=True))
        return "added"
    current = Layout(**{f: getattr(row, f) for f in FIELDS})
    if current == layout and row.active:
        return "unchanged"
    if current != layout and layout.version <= row.version:
        raise WorkerError(
            f"layout {layout.layout_id} changed without a version bump (registry has version {row.version})"
        )
    for field in FIELDS:
        setattr(row, field, getattr(layout, field))
    row.active, row.retired_at, row.synced_at = True, None, utcnow()
    return "changed"


def active_layouts(engine: Engine) -> list[Layout]:
    with Session(engine) as session:
        rows = session.scalars(select(LayoutRegistry).where(LayoutRegistry.active).order_by(LayoutRegistry.layout_id))
        return [Layout(**{f: getattr(row, f) for f in FIELDS}) for row in rows]


def file_types(layouts: Sequence[Layout]) -> set[str]:
    return {layout.file_type for layout in layouts}


def work(settings: Settings, params: Mapping[str, Any]) -> Metadata:
    path, feeds_path = params.get("definitions"), params.get("feeds")
    registry_version, layouts = parse_definitions(Path(path).read_text() if path else packaged_definitions())
    feeds_text = Path(feeds_path).read_text() if feeds_path else feeds.packaged_definitions()
    # Both files are refused before either registry is written; a feed must name a type a layout classifies.
    feeds_version, expected = feeds.parse_definitions(feeds_text, file_types(layouts))
    with metadata_engine(settings.metadata_db_url) as engine:
        counts = sync(engine, layouts)
        feed_counts = feeds.sync(engine, expected)
    return {
        **counts,
        "active": len(layouts),
        "registry_version": registry_version,
        **{f"feeds_{name}": count for name, count in feed_counts.items()},
        "feeds_active": len(expected),
        "feeds_registry_version": feeds_version,
    }


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):
        parser.add_argument("--definitions", help="a layout definitions JSON file (default: the packaged one)")
        parser.add_argument("--feeds", help="a feed definitions JSON file (default: the packaged one)")

    return run_worker("layouts", work, argv, arguments, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
