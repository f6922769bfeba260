"""Database calls from async code: in a worker thread, with a deadline.

A database that takes the connection and then never answers (a failover under way, a stalled
proxy, a frozen server whose kernel still acknowledges) would hold the calling thread until TCP
gives up, which may be never.  On the event loop that froze every request, ``/healthz``
included.  In a thread with a deadline, the request answers in bounded time (503, or without the
read model where the service has that path) and every other request goes on being served.  The
thread itself stays blocked until the database answers; its late result is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

P = ParamSpec("P")
T = TypeVar("T")


class DatabaseStalled(SQLAlchemyTimeoutError):
    """The database did not answer a call within its deadline.  A SQLAlchemy timeout, so what
    already treats "no connection in time" as "unavailable" (503, or the workflow-only path)
    treats this alike."""


async def in_thread(seconds: float, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a worker thread (with this task's context, as ``asyncio.to_thread``
    runs it); DatabaseStalled after ``seconds``.  Awaited under ``asyncio.timeout`` rather than
    ``wait_for``, which would wrap the call in one more task: every API write makes up to three
    of these calls, and the task's scheduling showed in their latency."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    try:
        async with asyncio.timeout(seconds):
            return await asyncio.get_running_loop().run_in_executor(None, call)
    except TimeoutError:
        raise DatabaseStalled(f"the database did not answer within {seconds:g} s") from None
