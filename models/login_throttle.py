"""Failed log-ins, counted per user name and per client address (api/auth/login_throttle.py).

In the database rather than in a process, so the limit holds across API replicas.  One row per
``key`` (``user:<name>`` or ``address:<ip>``): failures in the window that started at
``window_started_at``; ``blocked_until`` is set when they reach the limit.  Rows are bookkeeping,
not business state: they are purged once their window and block are over.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UTCDateTime


class LoginThrottle(Base):
    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    window_started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
