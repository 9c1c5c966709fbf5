"""The cron cadences feeds fall due by (workers.cron): ticks around month and year ends, and refusals."""

from datetime import UTC, datetime

import pytest

from workers.cron import Cron, CronError


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_a_monthly_cadence_falls_due_on_the_first_across_a_year_end():
    monthly = Cron.parse("0 0 1 * *")
    assert monthly.at_or_before(at(2026, 12, 31, 23, 59)) == at(2026, 12, 1)
    assert monthly.after(at(2026, 12, 31, 23, 59)) == at(2027, 1, 1)


def test_a_tick_is_at_or_before_itself_and_after_is_strictly_later():
    daily = Cron.parse("30 6 * * *")
    assert daily.at_or_before(at(2026, 3, 1, 6, 30)) == at(2026, 3, 1, 6, 30)
    assert daily.after(at(2026, 3, 1, 6, 30)) == at(2026, 3, 2, 6, 30)


def test_the_last_days_of_short_months_are_skipped_not_moved():
    on_the_31st = Cron.parse("0 0 31 * *")
    assert on_the_31st.after(at(2026, 1, 31, 12)) == at(2026, 3, 31)
    assert Cron.parse("0 0 29 feb *").after(at(2026, 1, 1)) == at(2028, 2, 29)


def test_weekday_names_ranges_and_steps():
    weekdays = Cron.parse("0 9 * * mon-fri")
    assert weekdays.after(at(2026, 12, 4, 10)) == at(2026, 12, 7, 9)  # Friday -> Monday
    assert Cron.parse("*/15 * * * *").after(at(2026, 1, 1, 0, 50)) == at(2026, 1, 1, 1, 0)
    assert Cron.parse("0 0 * * 7").after(at(2026, 12, 1)) == at(2026, 12, 6)  # 7 is Sunday


def test_both_day_fields_restricted_mean_either_as_in_vixie_cron():
    either = Cron.parse("0 0 13 * fri")
    assert either.after(at(2026, 12, 1)) == at(2026, 12, 4)  # a Friday before the 13th
    assert either.due_on(at(2026, 12, 13).date())


def test_macros_name_their_cadence():
    assert Cron.parse("@monthly").at_or_before(at(2026, 3, 1)) == at(2026, 3, 1)
    assert Cron.parse("@weekly").after(at(2026, 12, 1)) == at(2026, 12, 6)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("0 0 1 *", "needs five fields"),
        ("61 * * * *", "minute field"),
        ("0 0 1 13 *", "month field"),
        ("0 0 * * funday", "weekday field"),
        ("*/0 * * * *", "steps by less than 1"),
        ("0 0 30 2 *", "never falls due"),
        ("@fortnightly", "needs five fields"),
    ],
)
def test_what_is_no_cadence_is_refused_naming_the_field(expression, reason):
    with pytest.raises(CronError, match=reason):
        Cron.parse(expression)
