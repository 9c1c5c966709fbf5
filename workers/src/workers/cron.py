"""Cron cadences: crontab(5)'s five fields, read in UTC, and the ticks they fall due at.

Small on purpose: a feed needs only "the tick at or before" and "the tick after" a moment.
croniter is no dependency of the platform (Dagster 1.13 carries its own cron code, which the
worker images, having only dagster-pipes, do not install).

Supported: `*`, numbers, ranges `a-b`, steps `*/s`, `a-b/s` and `a/s`, lists, month and weekday
names (`jan`, `mon`), weekday 7 as Sunday, and the macros `@hourly` ... `@yearly`. As in Vixie
cron, when both day fields are restricted a day matching either one is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# A 29 February falls due at least once in eight years (2096, then 2104).
SEARCH_DAYS = 366 * 9


class CronError(ValueError):
    """An expression that is no cadence; the message names the field."""


@dataclass(frozen=True)
class Cron:
    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        fields = MACROS.get(expression.strip().lower(), expression).split()
        if len(fields) != 5:
            raise CronError(f"{expression!r} needs five fields (minute hour day month weekday), not {len(fields)}")
        minute, hour, day, month, weekday = fields
        cron = cls(
            expression=expression,
            minutes=tuple(sorted(values(minute, "minute", 0, 59))),
            hours=tuple(sorted(values(hour, "hour", 0, 23))),
            days=frozenset(values(day, "day of month", 1, 31)),
            months=frozenset(values(month, "month", 1, 12, MONTHS, first=1)),
            weekdays=frozenset(v % 7 for v in values(weekday, "weekday", 0, 7, WEEKDAYS)),
            any_day=day.startswith("*"),
            any_weekday=weekday.startswith("*"),
        )
        if cron.after(datetime(2000, 1, 1, tzinfo=UTC)) is None:
            raise CronError(f"{expression!r} never falls due")
        return cron

    def due_on(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_day, by_weekday = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return by_day and by_weekday
        return by_day or by_weekday

    def after(self, moment: datetime) -> datetime | None:
        """The first tick strictly after `moment` (UTC)."""
        start = floor_minute(moment) + timedelta(minutes=1)
        for offset in range(SEARCH_DAYS):
            day = start.date() + timedelta(days=offset)
            if self.due_on(day):
                earliest = (start.hour, start.minute) if offset == 0 else (0, 0)
                times = [(h, m) for h in self.hours for m in self.minutes if (h, m) >= earliest]
                if times:
                    return datetime(day.year, day.month, day.day, *times[0], tzinfo=UTC)
        return None

    def at_or_before(self, moment: datetime) -> datetime:
        """The latest tick at or before `moment` (UTC)."""
        end = floor_minute(moment)
        for offset in range(SEARCH_DAYS):
            day = end.date() - timedelta(days=offset)
            if self.due_on(day):
                latest = (end.hour, end.minute) if offset == 0 else (23, 59)
                times = [(h, m) for h in self.hours for m in self.minutes if (h, m) <= latest]
                if times:
                    return datetime(day.year, day.month, day.day, *times[-1], tzinfo=UTC)
        raise CronError(f"{self.expression!r} has no tick in the {SEARCH_DAYS} days before {moment.isoformat()}")


def floor_minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def values(field: str, name: str, low: int, high: int, names: tuple[str, ...] = (), first: int = 0) -> set[int]:
    """The numbers a field names; CronError naming the field and the part it cannot read."""
    found: set[int] = set()
    for part in field.lower().split(","):
        span, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                start, stop = low, high
            elif "-" in span:
                start, stop = (number(p, names, first) for p in span.split("-", 1))
            else:
                start = number(span, names, first)
                stop = high if step_text else start
        except ValueError:
            raise CronError(f"{name} field {field!r}: cannot read {part!r}") from None
        if step < 1 or not low <= start <= stop <= high:
            raise CronError(f"{name} field {field!r}: {part!r} is outside {low}-{high} or steps by less than 1")
        found.update(range(start, stop + 1, step))
    return found


def number(text: str, names: tuple[str, ...], first: int) -> int:
    if text in names:
        return names.index(text) + first
    if not text.isdigit():
        raise ValueError(text)
    return int(text)
