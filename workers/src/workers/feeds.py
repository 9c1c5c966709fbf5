"""Expected deliveries (feeds): the versioned feed_definitions.json, its registry, and freshness verdicts.

A feed says which submitter sends which file type how often: `cadence` is a cron read in UTC
whose every tick is a due time, `grace` how long after a due time a delivery is late but not
yet past grace, `early` how long before a due time a delivery may arrive to count for it
(default: from the previous due time on).

A delivery is a registered submission of the submitter with the file type, dated when the
platform registered it. Its type is the registrar's: the type its path declares, else the one
type all its files classified as (a drop mixing types counts for none; the daemon's sensor role
may not read submission_file). A duplicate (bytes delivered before) is no delivery.

Each delivery counts for one due time. First every due time takes the earliest delivery in its
window, which opens `early` before it and ends at it (on time); then every due time still unmet
takes the earliest delivery left before the next due time (late). With the default `early` a
delivery after a due time is also in the next one's window, and counts for that one once it
falls due: a partner always a day late shows late for that day only. A narrower `early` (P7D for
a monthly feed) tells a late delivery from an early one.

The verdict judges the latest due time: met, or late since the oldest of the unmet due times
that lead up to now: within `grace` of that one it is `late` (a warning), after it `past_grace`
(an error). The layouts worker syncs the definitions into feed_registry (retired, never deleted);
the orchestrator builds one check per feed from the same packaged file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from importlib import resources
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from workers.cron import Cron, CronError
from workers.db import FeedRegistry, Submission, utcnow
from workers.recovery import aware
from workers.runtime import Metadata, WorkerError

REQUIRED = ("feed_id", "submitter_id", "file_type", "cadence", "grace")
FIELDS = (*REQUIRED, "early")
# A feed id names its check (`feed_<id>`): Dagster allows letters, digits and underscores there.
FEED_ID = re.compile(r"[a-z][a-z0-9_]{0,62}")
DURATION = re.compile(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?")
# Due times judged at once: enough to find which ones a late delivery made up for.
LOOKBACK_TICKS = 12
DELIVERED, LATE, PAST_GRACE = "delivered", "late", "past_grace"


def duration(text: str) -> timedelta:
    """An ISO-8601 duration in weeks, days, hours and minutes (`P3D`, `PT12H`, `P1DT6H`)."""
    match = DURATION.fullmatch(text) if isinstance(text, str) else None
    if not match or not any(match.groups()) or text.endswith("T"):
        hint = " (months and years have no fixed length: give days)" if re.fullmatch(r"P.*\d[YM].*", str(text)) else ""
        raise ValueError(f"{text!r} is no ISO-8601 duration like P3D or PT12H{hint}")
    weeks, days, hours, minutes = (int(g or 0) for g in match.groups())
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes)


@dataclass(frozen=True)
class Feed:
    feed_id: str
    submitter_id: str
    file_type: str
    cadence: str
    grace: str
    early: str | None = None

    @cached_property
    def cron(self) -> Cron:
        return Cron.parse(self.cadence)

    @property
    def grace_period(self) -> timedelta:
        return duration(self.grace)

    @property
    def key(self) -> tuple[str, str]:
        return (self.submitter_id, self.file_type)

    @property
    def check_name(self) -> str:
        return f"feed_{self.feed_id}"

    def window_opens(self, due: datetime) -> datetime:
        """The earliest a delivery may arrive (exclusive) to count for `due`."""
        return due - duration(self.early) if self.early else self.cron.at_or_before(due - timedelta(minutes=1))

    def describe(self) -> str:
        early = f", counted from {self.early} before it" if self.early else ""
        return (
            f"{self.submitter_id} delivers {self.file_type}, due at each tick of `{self.cadence}` (UTC){early}; "
            f"late within {self.grace} of a due time (warning), past grace after it (error)."
        )


# --- the definitions --------------------------------------------------------------------------


def packaged_definitions() -> str:
    return resources.files("workers").joinpath("feed_definitions.json").read_text()


def packaged_feeds(file_types: Collection[str] | None = None) -> list[Feed]:
    return parse_definitions(packaged_definitions(), file_types)[1]


def parse_definitions(text: str, file_types: Collection[str] | None = None) -> tuple[int, list[Feed]]:
    """The registry version and its feeds; WorkerError naming the first entry at fault. With
    `file_types` (those the layouts classify), a feed of any other type is refused too."""
    try:
        body = json.loads(text)
        registry_version = int(body["registry_version"])
        entries = body["feeds"]
        if not isinstance(entries, list):
            raise TypeError("'feeds' is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkerError(f"feed definitions are malformed: {type(exc).__name__} {exc}") from None
    feeds = [_feed(i, entry, file_types) for i, entry in enumerate(entries)]
    _refuse_repeats(feeds)
    return registry_version, feeds


def _feed(index: int, entry: Any, file_types: Collection[str] | None) -> Feed:
    name = f"feed #{index}" + (f" ({entry.get('feed_id')})" if isinstance(entry, dict) else "")
    if not isinstance(entry, dict) or set(REQUIRED) - set(entry):
        raise WorkerError(f"{name} must have the fields {', '.join(REQUIRED)}")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise WorkerError(f"{name} has unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    if not all(isinstance(entry[f], str) and entry[f].strip() for f in REQUIRED):
        raise WorkerError(f"{name} has an empty or non-text field")
    fields: dict[str, Any] = {f: entry.get(f) for f in FIELDS}
    feed = Feed(**fields)
    if not FEED_ID.fullmatch(feed.feed_id):
        raise WorkerError(f"{name}: feed_id must be lower-case letters, digits and underscores, starting with a letter")
    if feed.submitter_id == "*":
        raise WorkerError(f"{name}: a feed is one submitter's, not every submitter's ('*')")
    if file_types is not None and feed.file_type not in file_types:
        raise WorkerError(f"{name}: no layout classifies file type {feed.file_type!r}")
    try:
        feed.cron  # noqa: B018 - parsed here so a bad cadence is refused with the entry's name
    except CronError as exc:
        raise WorkerError(f"{name}: cadence {exc}") from None
    for field in ("grace", "early"):
        try:
            if field == "grace" or feed.early is not None:
                duration(getattr(feed, field))
        except ValueError as exc:
            raise WorkerError(f"{name}: {field} {exc}") from None
    return feed


def _refuse_repeats(feeds: Sequence[Feed]) -> None:
    seen: dict[object, str] = {}
    for feed in feeds:
        for key, what in ((feed.feed_id, "feed_id"), (feed.key, "submitter and file type")):
            if key in seen:
                raise WorkerError(f"feed {feed.feed_id} repeats the {what} of feed {seen[key]}")
            seen[key] = feed.feed_id


# --- the registry -----------------------------------------------------------------------------


def sync(engine: Engine, feeds: Sequence[Feed]) -> dict[str, int]:
    """Make feed_registry's active rows equal the definitions; counts of what changed."""
    counts = {"added": 0, "changed": 0, "retired": 0, "unchanged": 0}
    wanted = {feed.feed_id: feed for feed in feeds}
    with Session(engine) as session, session.begin():
        rows = {row.feed_id: row for row in session.scalars(select(FeedRegistry))}
        for feed_id, feed in wanted.items():
            row = rows.get(feed_id)
            if row is None:
                session.add(FeedRegistry(**{f: getattr(feed, f) for f in FIELDS}, active=True))
                counts["added"] += 1
            elif as_feed(row) == feed and row.active:
                counts["unchanged"] += 1
            else:
                for field in FIELDS:
                    setattr(row, field, getattr(feed, field))
                row.active, row.retired_at, row.synced_at = True, None, utcnow()
                counts["changed"] += 1
        for feed_id, row in rows.items():
            if feed_id not in wanted and row.active:
                row.active, row.retired_at = False, utcnow()
                counts["retired"] += 1
    return counts


def as_feed(row: FeedRegistry) -> Feed:
    return Feed(**{f: getattr(row, f) for f in FIELDS})


def active_feeds(engine: Engine) -> list[Feed]:
    with Session(engine) as session:
        rows = session.scalars(select(FeedRegistry).where(FeedRegistry.active).order_by(FeedRegistry.feed_id))
        return [as_feed(row) for row in rows]


# --- the verdicts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedVerdict:
    """Where a feed stands at `judged_at`: times and counts, never keys."""

    feed: Feed
    state: str  # delivered | late | past_grace
    due_at: datetime  # the latest due time at or before judged_at
    overdue_since: datetime | None  # unmet: the oldest of the unmet due times leading up to now
    next_due_at: datetime
    delivered_at: datetime | None  # the delivery counted for due_at
    last_delivery_at: datetime | None
    missed: int  # unmet due times in the look-back since the first met one (all of them if none was)
    judged_at: datetime

    @property
    def passed(self) -> bool:
        return self.state == DELIVERED

    @property
    def grace_until(self) -> datetime:
        return (self.overdue_since or self.due_at) + self.feed.grace_period

    def metadata(self) -> dict[str, str | int]:
        def when(moment: datetime | None) -> str:
            return moment.isoformat(timespec="minutes") if moment else "never"

        return {
            "state": self.state,
            "submitter": self.feed.submitter_id,
            "file_type": self.feed.file_type,
            "cadence": self.feed.cadence,
            "due": when(self.due_at),
            "overdue_since": when(self.overdue_since) if self.overdue_since else "-",
            "grace_until": when(self.grace_until),
            "next_due": when(self.next_due_at),
            "delivery_for_due": when(self.delivered_at),
            "last_delivery": when(self.last_delivery_at),
            "missed_due_times": self.missed,
            "judged_at": when(self.judged_at),
        }


def due_times(feed: Feed, now: datetime) -> list[datetime]:
    """The due times judged at `now`, oldest first: the latest at or before it and those before,
    reaching back past its grace period and at least LOOKBACK_TICKS ticks."""
    ticks = [feed.cron.at_or_before(now)]
    reach = now - feed.grace_period
    while len(ticks) < LOOKBACK_TICKS or (ticks[-1] > reach and len(ticks) < 1000):
        ticks.append(feed.cron.at_or_before(ticks[-1] - timedelta(minutes=1)))
    return ticks[::-1]


def judge(feed: Feed, deliveries: Iterable[datetime], now: datetime) -> FeedVerdict:
    """The verdict on `feed` at `now`, given when each of its deliveries was registered."""
    ticks = due_times(feed, now)
    arrived = sorted(d for d in deliveries if d <= now)
    counted = match(feed, ticks, arrived)
    met = [counted[due] is not None for due in ticks]
    unmet = next((n for n, ok in enumerate(reversed(met)) if ok), len(ticks))
    overdue = ticks[-unmet] if unmet else None
    state = DELIVERED if overdue is None else LATE if now <= overdue + feed.grace_period else PAST_GRACE
    first_met = met.index(True) if True in met else 0
    return FeedVerdict(
        feed=feed,
        state=state,
        due_at=ticks[-1],
        overdue_since=overdue,
        next_due_at=feed.cron.after(now) or ticks[-1],
        delivered_at=counted[ticks[-1]],
        last_delivery_at=arrived[-1] if arrived else None,
        missed=met[first_met:].count(False),
        judged_at=now,
    )


def match(feed: Feed, ticks: Sequence[datetime], arrived: Sequence[datetime]) -> dict[datetime, datetime | None]:
    """Each due time's delivery: on time first (the earliest in its window up to it), then, for
    those still unmet, the earliest left before the next due time (late)."""
    counted: dict[datetime, datetime | None] = dict.fromkeys(ticks)
    unused = list(arrived)
    closes = [*ticks[1:], feed.cron.after(ticks[-1]) or ticks[-1]]
    for windows in (
        [(feed.window_opens(due), due) for due in ticks],
        [(due, closing) for due, closing in zip(ticks, closes, strict=True)],
    ):
        for due, (opens, until) in zip(ticks, windows, strict=True):
            found = next((d for d in unused if opens < d <= until), None) if counted[due] is None else None
            if found is not None:
                unused.remove(found)
                counted[due] = found
    return counted


def deliveries(engine: Engine, feeds: Sequence[Feed], since: datetime) -> dict[str, list[datetime]]:
    """When each feed's deliveries since `since` were registered, by feed id (duplicates left out)."""
    query = select(Submission.submitter_id, Submission.file_type, Submission.created_at).where(
        Submission.submitter_id.in_({feed.submitter_id for feed in feeds}),
        Submission.created_at > since,
        Submission.status != "duplicate",
    )
    with Session(engine) as session:
        rows = session.execute(query).all()
    return {
        feed.feed_id: sorted(
            aware(created) for submitter, file_type, created in rows if (submitter, file_type) == feed.key
        )
        for feed in feeds
    }


def verdicts(engine: Engine, feeds: Sequence[Feed], now: datetime) -> list[FeedVerdict]:
    """Every feed judged at `now` from the submission table."""
    if not feeds:
        return []
    since = min(feed.window_opens(due_times(feed, now)[0]) for feed in feeds)
    delivered = deliveries(engine, feeds, since)
    return [judge(feed, delivered[feed.feed_id], now) for feed in feeds]


def report(engine: Engine, feeds: Sequence[Feed], now: datetime | None = None) -> Metadata:
    """The verdicts as the audit worker reports them (`--feeds`): a record per feed."""
    judged = verdicts(engine, feeds, now or utcnow())
    records = [{"feed_id": v.feed.feed_id, "passed": v.passed, **v.metadata()} for v in judged]
    return {"passed": all(v.passed for v in judged), "feeds": records}
