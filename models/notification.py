"""The task inbox and the notification log.

Both are keyed for exactly-once: a task by its idempotency key ("handoff:<contract>:<milestone>"),
a notification by "(contract, item, level, recipient, channel)".  Activities insert with
ON CONFLICT DO NOTHING, so a retried or replayed activity never opens a task or decides a
message twice; the row then records whether the message actually went out.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UTCDateTime


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_assignee_status", "assignee", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(300), unique=True)  # idempotency key
    contract_id: Mapped[str] = mapped_column(String(40), index=True)
    milestone_key: Mapped[str | None] = mapped_column(String(60))
    assignee: Mapped[str] = mapped_column(String(100))  # a user id
    title: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default="open")  # open, acked, done
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acked_by: Mapped[str | None] = mapped_column(String(100))


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # "c123:installment:m1:level1:li.wei:email": one message per item, level, recipient and channel.
    key: Mapped[str] = mapped_column(String(300), unique=True)
    contract_id: Mapped[str] = mapped_column(String(40), index=True)
    item_type: Mapped[str] = mapped_column(String(30))  # milestone, installment, handoff, reminder...
    item_key: Mapped[str] = mapped_column(String(60))
    level: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(30))  # reminder, escalation, handoff
    recipient: Mapped[str] = mapped_column(String(100))  # a user id
    role: Mapped[str] = mapped_column(String(120))  # owner, manager, cc, "user:<id>"...
    channel: Mapped[str] = mapped_column(String(20))  # email, webhook, inbox
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default="decided")  # decided, sent, failed
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
