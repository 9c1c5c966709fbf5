"""Recorded outcomes for inbox objects the platform does not register, so an operator can query
why (`python -m workers.tables inbox_rejection`) instead of searching logs."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Engine, select, tuple_
from sqlalchemy.orm import Session

from workers.db import InboxRejection, utcnow
from workers.inbox import InboxObject

BATCH = 500


def record_rejections(engine: Engine, rejected: Iterable[tuple[InboxObject, str, str | None]]) -> int:
    """Upsert (object, reason, grouping_key) by key + ETag; returns how many were new."""
    rejected = list(rejected)
    new = 0
    with Session(engine) as session, session.begin():
        for start in range(0, len(rejected), BATCH):
            batch = rejected[start : start + BATCH]
            known = {
                (row.key, row.etag): row
                for row in session.scalars(
                    select(InboxRejection).where(
                        tuple_(InboxRejection.key, InboxRejection.etag).in_([(o.key, o.etag) for o, _, _ in batch])
                    )
                )
            }
            for obj, reason, grouping_key in batch:
                row = known.get((obj.key, obj.etag))
                if row is None:
                    row = InboxRejection(key=obj.key, etag=obj.etag, size_bytes=obj.size, grouping_key=grouping_key)
                    session.add(row)
                    known[(obj.key, obj.etag)] = row
                    new += 1
                row.reason, row.last_seen_at = reason[:500], utcnow()
    return new
