"""Recorded outcomes for inbox objects the platform does not register, so an operator can query
why (`python -m workers.tables inbox_rejection`) instead of searching logs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, func, select, tuple_
from sqlalchemy.orm import Session

from workers.db import InboxRejection, utcnow
from workers.inbox import InboxObject, file_id

BATCH = 500


@dataclass(frozen=True)
class Rejection:
    """A newly recorded rejection, as shown to an operator: the object by its id, never its key
    (a member's name can be in it) nor its contents."""

    file_id: str
    reason: str
    size_bytes: int


def record_rejections(engine: Engine, rejected: Iterable[tuple[InboxObject, str, str | None]]) -> list[Rejection]:
    """Upsert (object, reason, grouping_key) by key + ETag; returns the ones not on record before."""
    rejected = list(rejected)
    new = []
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
                    new.append(Rejection(file_id(obj.key), reason[:500], obj.size))
                row.reason, row.last_seen_at = reason[:500], utcnow()
    return new


def rejections_on_record(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(InboxRejection)) or 0
