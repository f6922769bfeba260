"""Throttling failed log-ins: after ``LOGIN_MAX_FAILURES`` wrong passwords for one user name (or
``LOGIN_MAX_FAILURES_PER_ADDRESS`` from one client address) within ``LOGIN_FAILURE_WINDOW_SECONDS``,
log-ins for that name (or from that address) are refused with 429 and ``Retry-After`` for
``LOGIN_LOCKOUT_SECONDS``, whatever the password: guessing stays slow even with many tries in
parallel.  A successful log-in clears its user name's count.

The counts live in the database (models/login_throttle.py), so they hold across API replicas: each
failure is one atomic UPDATE (or an upsert starting a new window).  The user name's limit is the
guard against guessing one person's password; the address's, higher (offices share addresses),
against trying one password on many names.  Behind a reverse proxy the address is the one uvicorn
is told about (``--proxy-headers``, ``--forwarded-allow-ips``).
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api.platform.problems import Problem
from core.settings import Settings
from models import LoginThrottle
from models.db import rows_changed

_PURGE_EVERY_SECONDS = 600.0
_next_purge = 0.0


class TooManyAttempts(Problem):
    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(429, f"too many failed log-ins; try again in {seconds} seconds", slug="too-many-log-ins",
                         headers={"Retry-After": str(seconds)})


def _now() -> datetime:
    return datetime.now(timezone.utc)


def user_key(username: str) -> str:
    # A user name longer than any real one (a guess, an attack) is kept by its hash: the key column is bounded.
    return f"user:{username}" if len(username) <= 200 else "user-sha256:" + hashlib.sha256(username.encode()).hexdigest()


def address_key(address: str | None) -> str | None:
    return f"address:{address}" if address else None


class LoginLimiter:
    """The rules above, over a session the caller commits."""

    def __init__(self, settings: Settings) -> None:
        self.window = timedelta(seconds=settings.login_failure_window_seconds)
        self.lockout = timedelta(seconds=settings.login_lockout_seconds)
        self.limits = {"user": settings.login_max_failures, "address": settings.login_max_failures_per_address}

    def check(self, session: Session, username: str, address: str | None) -> None:
        """``TooManyAttempts`` while the user name or the address is blocked."""
        now = _now()
        keys = [k for k in (user_key(username), address_key(address)) if k]
        T = LoginThrottle
        until = session.execute(
            select(T.blocked_until).where(T.key.in_(keys), T.blocked_until > now).order_by(T.blocked_until.desc())
        ).scalars().first()
        if until is not None:
            raise TooManyAttempts((until - now).total_seconds())

    def failed(self, session: Session, username: str, address: str | None) -> None:
        now = _now()
        self._count(session, user_key(username), self.limits["user"], now)
        key = address_key(address)
        if key:
            self._count(session, key, self.limits["address"], now)
        self._purge_now_and_then(session, now)

    def succeeded(self, session: Session, username: str) -> None:
        session.execute(delete(LoginThrottle).where(LoginThrottle.key == user_key(username)))

    def _count(self, session: Session, key: str, limit: int, now: datetime) -> None:
        T = LoginThrottle
        counted = rows_changed(session.execute(
            update(T).where(T.key == key, T.window_started_at > now - self.window).values(failures=T.failures + 1)
        ))
        if not counted:  # no row, or its window is over: a new window with this failure
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            fresh = {"failures": 1, "window_started_at": now, "blocked_until": None}
            session.execute(insert(T).values(key=key, **fresh).on_conflict_do_update(index_elements=["key"], set_=fresh))
        failures = session.execute(select(T.failures).where(T.key == key)).scalar_one()
        if failures >= limit:
            # Blocked; the count starts again, so after the lockout there are ``limit`` more tries.
            session.execute(update(T).where(T.key == key).values(blocked_until=now + self.lockout, failures=0,
                                                                 window_started_at=now))

    def _purge_now_and_then(self, session: Session, now: datetime) -> None:
        global _next_purge
        if time.monotonic() < _next_purge:
            return
        _next_purge = time.monotonic() + _PURGE_EVERY_SECONDS
        T = LoginThrottle
        session.execute(delete(T).where(T.window_started_at < now - self.window,
                                        or_(T.blocked_until.is_(None), T.blocked_until < now)))
