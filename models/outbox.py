"""The notification outbox: every notice a contract decided, waiting for its time.

The contract workflow plans its reminders (and decides hand-offs, approval requests, amended
dates) and the projection writes them here in the same transaction as the contract's read model:
one row per notice, unique by ``key``.  The dispatcher (core/outbox.py) sends each row once its
``send_at`` has come, to the recipients the ``notify`` logic resolves (exactly once per recipient
and channel, in ``notifications``).  A plan that no longer wants a reminder (the date moved, the
item was resolved, the contract closed) marks it ``cancelled`` before it goes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UTCDateTime

PENDING, SENT, CANCELLED, FAILED = "pending", "sent", "cancelled", "failed"


class OutboxNotice(Base):
    __tablename__ = "notification_outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "send_at"),
        Index("ix_outbox_item", "contract_id", "item_type", "item_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(300), unique=True)  # "<contract>:<item>:<due>:<kind><level><tag>"
    contract_id: Mapped[str] = mapped_column(String(40))
    item_type: Mapped[str] = mapped_column(String(30))
    item_key: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(30))  # reminder, handoff, approval, amended
    send_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(20), default=PENDING)  # pending, sent, cancelled, failed
    request: Mapped[dict[str, Any]] = mapped_column(JSON)  # the NotifyRequest
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # after a transient failure
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(Text)
    # When a dispatcher took this reminder for delivery (core/outbox.py ``_take_reminder``): the
    # mark that lets a copy of the same reminder, planned again under another key, be recognised.
    told_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AmendmentRecord(Base):
    """An amendment as the workflow last projected it, with its impact: once it is decided the
    workflow lets the impact go and the API reads it from here."""

    __tablename__ = "amendments"

    contract_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    amendment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)  # the AmendmentState, impact included
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
