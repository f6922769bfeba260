"""Stored answers to POST/PATCH requests sent with an ``Idempotency-Key`` header (api/platform/idempotency.py).

One row per (scope, key), where ``scope`` is the SHA-256 of "METHOD path": the same key on another
route is another row.  The unique constraint settles races: the request whose INSERT wins runs, the
others find the row.  ``status`` goes ``in_progress`` -> ``done``; while in progress ``locked_until``
is pushed forward by the running request, so a row left by a crashed process is taken over once
its lock runs out.  ``expires_at`` bounds how long a key is remembered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UTCDateTime

IN_PROGRESS = "in_progress"
DONE = "done"


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("scope", "key", name="uq_idempotency_keys_scope_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(64))  # sha256 hex of "METHOD path"
    key: Mapped[str] = mapped_column(String(255))  # the client's Idempotency-Key
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(2000))
    request_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the request's fingerprint
    status: Mapped[str] = mapped_column(String(20))  # in_progress, done
    lock_token: Mapped[str | None] = mapped_column(String(32))  # the running request's; null once done
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[list[Any] | None] = mapped_column(JSON)  # [[name, value], ...]
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    locked_until: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
