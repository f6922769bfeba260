"""ISO 8601 durations (``P5D``, ``PT10S``, ``P1M``) for playbooks, due offsets and policies.

Pure functions with no clock: the workflow imports them, so they must stay deterministic.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import isodate


class DurationError(ValueError):
    pass


def parse_duration(text: str):
    """Parse an ISO 8601 duration; refuse negative or malformed ones with a readable message."""
    if not isinstance(text, str) or not text.startswith("P"):
        raise DurationError(f"{text!r} is not an ISO 8601 duration such as 'P5D' or 'PT10S'")
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise DurationError(f"{text!r} is not an ISO 8601 duration such as 'P5D' or 'PT10S'") from exc
    probe = datetime(2000, 1, 1) + value
    if probe < datetime(2000, 1, 1):
        raise DurationError(f"duration {text!r} must not be negative")
    return value


def add_duration(start: datetime, text: str) -> datetime:
    return start + parse_duration(text)


def to_timedelta(text: str) -> timedelta:
    """Durations without months or years (policies, reminders)."""
    value = parse_duration(text)
    if not isinstance(value, timedelta):
        raise DurationError(f"{text!r} uses months or years; use days here, e.g. 'P30D'")
    return value
