"""Cron expressions, on the host: validated when settings load (the container's
croniter runs them) and turned into the worst-case gap between two runs,
which is the schedule's recovery point objective.

Only the standard five fields and the @-aliases cron documents; no seconds,
no ``L``/``W``/``#`` extensions, so whatever validates here croniter runs too.
"""

from __future__ import annotations

from datetime import datetime, timedelta

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_NAMES = {
    3: {n: i for i, n in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                    "dec"], 1)},
    4: {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}


class CronError(ValueError):
    pass


def _value(text: str, index: int) -> int:
    low = text.lower()
    if low in _NAMES.get(index, {}):
        return _NAMES[index][low]
    if not text.isdigit():
        raise CronError(f"{_FIELDS[index][0]}: {text!r} is not a number")
    return int(text)


def _field(text: str, index: int) -> set[int]:
    name, low, high = _FIELDS[index]
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"{name}: bad step {step_text!r}")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(a, index), _value(b, index)
        else:
            start = _value(base, index)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise CronError(f"{name}: {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:  # 7 and 0 are both Sunday
        values = (values - {7}) | {0}
    return values


def parse(expression: str) -> tuple[set[int], ...]:
    """The five fields of a cron expression as sets of values; CronError when invalid."""
    text = ALIASES.get(expression.strip().lower(), expression.strip())
    parts = text.split()
    if len(parts) != 5:
        raise CronError(f"{expression!r}: need five fields (minute hour day month weekday) or an @alias")
    return tuple(_field(part, i) for i, part in enumerate(parts))


def _day_matches(fields: tuple[set[int], ...], day: datetime) -> bool:
    _, _, dom, month, dow = fields
    if day.month not in month:
        return False
    weekday = (day.weekday() + 1) % 7  # cron: Sunday = 0
    # cron's rule: when both day fields are restricted, either may match.
    if len(dom) == 31 or len(dow) == 7:
        return day.day in dom and weekday in dow
    return day.day in dom or weekday in dow


def fire_times(expression: str, start: datetime, end: datetime) -> list[datetime]:
    fields = parse(expression)
    minutes, hours = sorted(fields[0]), sorted(fields[1])
    out = []
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    while day < end:
        if _day_matches(fields, day):
            out.extend(t for h in hours for m in minutes
                       if start <= (t := day.replace(hour=h, minute=m)) < end)
        day += timedelta(days=1)
    return out


def max_gap_seconds(expression: str, *more: str, start: datetime | None = None) -> int:
    """The longest time between two consecutive runs over a year: the recovery
    point the schedule promises, before the run's own duration. Several
    expressions: runs of any of them (full and differential backups, say)."""
    start = start or datetime(2025, 1, 1)
    times = sorted({t for expr in (expression, *more) for t in fire_times(expr, start, start + timedelta(days=366))})
    if len(times) < 2:
        return 366 * 86400
    return int(max((b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)))
