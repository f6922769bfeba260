"""The working-day calendar, as an activity: China's public holidays and make-up working days.

It runs as an activity, not in workflow code, so its answers are recorded in history: upgrading
the ``chinesecalendar`` package (a new year's schedule, a correction) never changes what a
running contract replays.  A year whose schedule is not published yet is refused with a clear,
non-retryable error; the workflow records that and says which plain date it used.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import chinese_calendar
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.durations import parse_duration
from workflows.types import BusinessDueRequest


class CalendarUnavailable(ValueError):
    pass


def is_workday(day: date) -> bool:
    try:
        return chinese_calendar.is_workday(day)
    except NotImplementedError as exc:
        raise CalendarUnavailable(
            f"China's holiday schedule for {day.year} is not published in this calendar "
            f"(chinesecalendar {getattr(chinese_calendar, '__version__', '?')}); working days cannot be counted"
        ) from exc


def business_due(base: datetime, offset: str, tz: str = "Asia/Shanghai") -> datetime:
    """``base`` plus ``offset`` where whole days are working days; the result never falls on a
    non-working day (it rolls forward to the next working day, keeping the time of day)."""
    zone = ZoneInfo(tz)
    local = base.astimezone(zone)
    duration = parse_duration(offset)
    if isinstance(duration, timedelta):
        days, rest = duration.days, duration - timedelta(days=duration.days)
    else:  # months/years: calendar arithmetic, then roll to a working day
        local, days, rest = local + duration, 0, timedelta(0)
    moment = local + rest
    day = moment.date()
    while days > 0:
        day += timedelta(days=1)
        if is_workday(day):
            days -= 1
    while not is_workday(day):
        day += timedelta(days=1)
    return datetime.combine(day, moment.timetz()).astimezone(base.tzinfo)


@activity.defn(name="business_due")
def business_due_activity(request: BusinessDueRequest) -> str:
    """ISO 8601 text: a bare datetime result does not survive the workflow sandbox's converter."""
    try:
        return business_due(request.base, request.offset, request.timezone).isoformat()
    except CalendarUnavailable as exc:
        raise ApplicationError(str(exc), type="CalendarUnavailable", non_retryable=True) from exc
