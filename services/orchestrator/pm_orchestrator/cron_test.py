"""The cron parser: fields, ranges, steps, lists, names and the day-of-month / day-of-week rule."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from pm_orchestrator.cron import CronError, CronSchedule


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _next(expression: str, after: str, count: int = 1) -> list[str]:
    schedule = CronSchedule.parse(expression)
    found: list[str] = []
    when = _at(after)
    for _ in range(count):
        following = schedule.next_after(when)
        assert following is not None
        found.append(following.strftime("%Y-%m-%d %H:%M %a"))
        when = following
    return found


def test_a_star_matches_every_minute() -> None:
    assert _next("* * * * *", "2026-03-01T10:15:30", 3) == [
        "2026-03-01 10:16 Sun",
        "2026-03-01 10:17 Sun",
        "2026-03-01 10:18 Sun",
    ]


def test_single_values_pick_one_minute_a_day() -> None:
    assert _next("30 4 * * *", "2026-03-01T04:30:00", 2) == ["2026-03-02 04:30 Mon", "2026-03-03 04:30 Tue"]


def test_ranges_steps_and_lists() -> None:
    schedule = CronSchedule.parse("0-10/5,45 9-11 * * *")
    assert sorted(schedule.minutes) == [0, 5, 10, 45]
    assert sorted(schedule.hours) == [9, 10, 11]
    assert sorted(CronSchedule.parse("*/15 * * * *").minutes) == [0, 15, 30, 45]
    # `a/n` runs from a to the end of the field.
    assert sorted(CronSchedule.parse("50/4 * * * *").minutes) == [50, 54, 58]
    assert sorted(CronSchedule.parse("0 */7 * * *").hours) == [0, 7, 14, 21]
    assert _next("0-10/5,45 9-11 * * *", "2026-03-01T11:40:00", 2) == ["2026-03-01 11:45 Sun", "2026-03-02 09:00 Mon"]


def test_month_and_weekday_names_are_accepted_in_any_case() -> None:
    schedule = CronSchedule.parse("0 8 * JAN-mar Mon-Fri")
    assert sorted(schedule.months) == [1, 2, 3]
    assert sorted(schedule.weekdays) == [1, 2, 3, 4, 5]
    assert _next("0 8 * jan-mar mon-fri", "2026-03-27T09:00:00", 2) == ["2026-03-30 08:00 Mon", "2026-03-31 08:00 Tue"]


def test_sunday_is_both_0_and_7() -> None:
    assert CronSchedule.parse("0 0 * * 7").weekdays == CronSchedule.parse("0 0 * * 0").weekdays == frozenset({0})
    assert sorted(CronSchedule.parse("0 0 * * 5-7").weekdays) == [0, 5, 6]


def test_day_of_month_alone_decides_when_day_of_week_is_a_star() -> None:
    assert _next("0 0 13 * *", "2026-01-01T00:00:00", 3) == [
        "2026-01-13 00:00 Tue",
        "2026-02-13 00:00 Fri",
        "2026-03-13 00:00 Fri",
    ]


def test_day_of_week_alone_decides_when_day_of_month_is_a_star() -> None:
    assert _next("0 0 * * fri", "2026-01-01T00:00:00", 2) == ["2026-01-02 00:00 Fri", "2026-01-09 00:00 Fri"]


def test_both_day_fields_restricted_means_either_one() -> None:
    # The 13th of every month and every Friday, not only Friday the 13th.
    assert _next("0 0 13 * 5", "2026-01-01T00:00:00", 4) == [
        "2026-01-02 00:00 Fri",
        "2026-01-09 00:00 Fri",
        "2026-01-13 00:00 Tue",
        "2026-01-16 00:00 Fri",
    ]


def test_a_stepped_star_counts_as_restricted() -> None:
    # Odd days of the month or Mondays (Kubernetes' reading): 2026-03-02 is a Monday.
    assert _next("0 0 */2 * mon", "2026-02-28T12:00:00", 3) == [
        "2026-03-01 00:00 Sun",
        "2026-03-02 00:00 Mon",
        "2026-03-03 00:00 Tue",
    ]


def test_the_29th_of_february_is_found_in_the_next_leap_year() -> None:
    assert _next("0 12 29 2 *", "2026-03-01T00:00:00") == ["2028-02-29 12:00 Tue"]


def test_shorthands() -> None:
    assert replace(CronSchedule.parse("@hourly"), expression="") == replace(
        CronSchedule.parse("0 * * * *"), expression=""
    )
    assert CronSchedule.parse("@Daily").expression == "@Daily"
    assert sorted(CronSchedule.parse("@daily").hours) == [0]
    assert _next("@weekly", "2026-03-04T00:00:00") == ["2026-03-08 00:00 Sun"]


def test_the_latest_occurrence_at_or_before_a_time() -> None:
    schedule = CronSchedule.parse("0 3 * * *")
    assert schedule.latest_at_or_before(_at("2026-03-05T03:00:59")) == _at("2026-03-05T03:00:00")
    assert schedule.latest_at_or_before(_at("2026-03-05T02:59:00")) == _at("2026-03-04T03:00:00")
    every = CronSchedule.parse("*/10 * * * *")
    assert every.latest_at_or_before(_at("2026-03-05T00:09:00")) == _at("2026-03-05T00:00:00")
    assert every.latest_at_or_before(_at("2026-03-05T00:00:00")) == _at("2026-03-05T00:00:00")


def test_next_and_latest_agree_with_matches_minute_by_minute() -> None:
    schedule = CronSchedule.parse("5,35 */6 1-7 * sat")
    start = _at("2026-02-25T00:00:00")
    minutes = [start + timedelta(minutes=i) for i in range(60 * 24 * 20)]
    matching = [m for m in minutes if schedule.matches(m)]
    assert matching
    walked = []
    when = start - timedelta(minutes=1)
    while True:
        following = schedule.next_after(when)
        assert following is not None
        if following > minutes[-1]:
            break
        walked.append(following)
        when = following
    assert walked == matching
    assert schedule.latest_at_or_before(matching[-1] + timedelta(minutes=29)) == matching[-1]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* 24 * * *", "hour: 24 is outside 0-23"),
        ("* * 0 * *", "day of month: 0 is outside 1-31"),
        ("* * * 13 *", "month: 13 is outside 1-12"),
        ("* * * * 8", "day of week: 8 is outside 0-7"),
        ("*/0 * * * *", "minute: step '0' must be a positive number"),
        ("10-5 * * * *", "minute: range '10-5' runs backwards"),
        ("1,,2 * * * *", "minute: empty list element"),
        ("x * * * *", "minute: 'x' is not a number"),
        ("* * * smarch *", "month: 'smarch' is not a number or a name"),
        ("0 0 30 2 *", "never matches"),
    ],
)
def test_invalid_expressions_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(CronError, match=message.replace("*", r"\*")):
        CronSchedule.parse(expression)
