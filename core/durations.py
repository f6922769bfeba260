"""ISO 8601 durations (``P5D``, ``PT10S``, ``P1M``) for playbooks, due offsets and policies.

Pure functions with no clock: the workflow imports them, so they must stay deterministic.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta

import isodate


class DurationError(ValueError):
    pass


def parse_duration(text: str):
    """Parse an ISO 8601 duration; refuse negative or malformed ones with a readable message."""
    if not isinstance(text, str) or not text.startswith("P"):
        raise DurationError(f"{text!r} is not an ISO 8601 duration such as 'P5D' or 'PT10S'")
    return _parsed(text)


@functools.lru_cache(maxsize=4096)
def _parsed(text: str):
    """Cached: a contract re-dates its items with the same few offsets after every change (the
    results are immutable: timedelta, or isodate's Duration, which its users never modify)."""
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise DurationError(f"{text!r} is not an ISO 8601 duration such as 'P5D' or 'PT10S'") from exc
    probe = datetime(2000, 1, 1) + value
    if probe < datetime(2000, 1, 1):
        raise DurationError(f"duration {text!r} must not be negative")
    return value


def add_duration(start: datetime, text: str) -> datetime:
    step = _step(text)
    if step is not None:
        return start + step
    return _plus_calendar(start, start.tzinfo, start.fold, text)


@functools.lru_cache(maxsize=4096)
def _step(text: str) -> timedelta | None:
    """The duration as a timedelta, or None when it counts months or years.  Cached with the
    check: the workflow adds the same few offsets ~20 times a task, and in Temporal's sandbox
    every ``isinstance`` is a wrapped call."""
    value = parse_duration(text)
    return value if isinstance(value, timedelta) else None


@functools.lru_cache(maxsize=16384)
def _plus_calendar(start: datetime, tzinfo, fold: int, text: str) -> datetime:
    """Months and years: isodate's arithmetic takes 10-20 us (a timedelta's, 0.5), and a contract
    re-dates the same installments (P1M ... P12M from its start) after every change.  Keyed on the
    time zone and fold as well: two equal instants in different zones must not share a result."""
    return start + _parsed(text)


def to_timedelta(text: str) -> timedelta:
    """Durations without months or years (policies, reminders)."""
    value = parse_duration(text)
    if not isinstance(value, timedelta):
        raise DurationError(f"{text!r} uses months or years; use days here, e.g. 'P30D'")
    return value


# The longest duration the service accepts from a request: a century.  Longer ones mean nothing for
# a contract and would take date arithmetic out of range (a 500, or a year past 9999) when the
# workflow adds them to a due date.  Years and months are measured at their average length
# (365.25 and 30.4375 days), so P100Y and P1200M are exactly the cap.
MAX_DURATION = timedelta(days=36525)
MAX_DURATION_TEXT = "100 years"


def check_duration(text: str, *, days_only: bool = False):
    """What :func:`parse_duration` (or, with ``days_only``, :func:`to_timedelta`) returns for a
    duration a request may carry; :class:`DurationError` when it is malformed, negative, above
    :data:`MAX_DURATION`, or (``days_only``) uses months or years.

    Validation for the API: ``parse_duration``, ``add_duration`` and ``to_timedelta`` stay as they
    are for the workflow, which only ever sees durations that passed here (or came from a playbook).
    """
    if not isinstance(text, str) or not text.startswith("P"):
        raise DurationError(f"{text!r} is not an ISO 8601 duration such as 'P5D' or 'PT10S'")
    try:
        value = isodate.parse_duration(text)
        if isinstance(value, isodate.Duration):
            span = value.tdelta + timedelta(days=float(value.years) * 365.25 + float(value.months) * 30.4375)
        else:
            span = value
    except (isodate.ISO8601Error, ValueError) as exc:
        raise DurationError(f"{text!r} is not an ISO 8601 duration such as 'P5D' or 'PT10S'") from exc
    except OverflowError:
        span = None  # a number too large for the arithmetic: far above the cap
    if span is None or span > MAX_DURATION:
        raise DurationError(f"duration {text!r} is too long: at most {MAX_DURATION_TEXT}")
    return to_timedelta(text) if days_only else parse_duration(text)
