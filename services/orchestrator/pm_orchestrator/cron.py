"""Five-field cron expressions (minute hour day-of-month month day-of-week), evaluated in UTC.

Each field is `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from a to the
field's end), or a comma-separated list of those. Months and weekdays may be written as names
(`jan`-`dec`, `sun`-`sat`, any case); weekday 0 and 7 are both Sunday. `@hourly`, `@daily`
(`@midnight`), `@weekly`, `@monthly` and `@yearly` (`@annually`) are shorthands.

Day of month and day of week follow cron's rule: when both are restricted (neither is `*`), a
day matches if either matches (`0 0 1,15 * mon` runs on the 1st, the 15th and every Monday);
when one is `*`, only the other decides. A stepped star such as `*/2` counts as restricted, as in
Kubernetes CronJobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTHS = {m: i for i, m in enumerate(("jan feb mar apr may jun jul aug sep oct nov dec").split(), start=1)}
_DAYS = {d: i for i, d in enumerate(("sun mon tue wed thu fri sat").split())}
_SHORTHANDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, lowest, highest, names) of each field, in order.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
# A day that matches comes round within this many days (29 February on a given weekday: 28 years).
_SEARCH_DAYS = 366 * 29


class CronError(ValueError):
    """An expression that is not valid cron, naming the field and the problem."""


def _value(text: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    key = text.lower()
    if key in names:
        return names[key]
    if not text.isdigit():
        raise CronError(f"{field}: {text!r} is not a number" + (f" or a name ({', '.join(names)})" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{field}: {value} is outside {low}-{high}")
    return value


def _field(text: str, field: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{field}: empty list element in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = _value(first, field, low, high, names), _value(last, field, low, high, names)
            if start > end:
                raise CronError(f"{field}: range {base!r} runs backwards")
        else:
            start = _value(base, field, low, high, names)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A parsed expression: the set of allowed values of each field."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        """Parse `expression`; CronError says which field is wrong and why."""
        text = " ".join(expression.split())
        fields = _SHORTHANDS.get(text.lower(), text).split(" ")
        if len(fields) != 5:
            raise CronError(
                f"{expression!r}: expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
            )
        minutes, hours, days, months, weekdays = (
            _field(part, name, low, high, names) for part, (name, low, high, names) in zip(fields, _FIELDS, strict=True)
        )
        schedule = cls(
            expression=text,
            minutes=minutes,
            hours=hours,
            days=days,
            months=months,
            weekdays=frozenset(d % 7 for d in weekdays),
            days_restricted=fields[2] != "*",
            weekdays_restricted=fields[4] != "*",
        )
        if schedule.next_after(datetime(2000, 1, 1, tzinfo=UTC)) is None:
            raise CronError(f"{expression!r} never matches a real date")
        return schedule

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        on_weekday = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_month or on_weekday
        return in_month and on_weekday

    def matches(self, when: datetime) -> bool:
        """Whether the minute of `when` (UTC) is one of the schedule's."""
        when = when.astimezone(UTC)
        return when.minute in self.minutes and when.hour in self.hours and self._day_matches(when)

    def next_after(self, when: datetime) -> datetime | None:
        """The first matching minute strictly after `when` (None if there is none within 29 years)."""
        start = when.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        candidate = day.replace(hour=hour, minute=minute)
                        if candidate >= start:
                            return candidate
            day += timedelta(days=1)
        return None

    def latest_at_or_before(self, when: datetime) -> datetime | None:
        """The last matching minute at or before `when` (None if there is none within 29 years)."""
        end = when.astimezone(UTC).replace(second=0, microsecond=0)
        day = end.replace(hour=0, minute=0)
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(day):
                for hour in sorted(self.hours, reverse=True):
                    for minute in sorted(self.minutes, reverse=True):
                        candidate = day.replace(hour=hour, minute=minute)
                        if candidate <= end:
                            return candidate
            day -= timedelta(days=1)
        return None
