"""Outgoing webhook subscriptions and their delivery log (docs/webhooks.md).

``contract_events`` is the outbox: a subscription's ``cursor`` is the last ``contract_events.id``
it has finished with (delivered, failed for good, or not of a type it wants).  The dispatcher
advances it only after the outcome is written to ``webhook_deliveries``, so a crash in between
sends the same event again, with the same id.  ``lease_owner``/``lease_until`` make one dispatcher
replica at a time serve a subscription (the claim is a conditional UPDATE, on any database).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UTCDateTime


class WebhookSubscription(Base):
    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(200))  # HMAC key; write-only through the API
    event_types: Mapped[list[str]] = mapped_column(JSON)  # ["*"], ["milestone.*", "payment.received"]...
    description: Mapped[str] = mapped_column(String(300), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    cursor: Mapped[int] = mapped_column(Integer, default=0)  # last contract_events.id handled
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # the head event's retry
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)  # events failed in a row
    last_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One row per (subscription, event): its attempts and outcome."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id", name="uq_webhook_deliveries_subscription_event"),
        Index("ix_webhook_deliveries_subscription_status", "subscription_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Indexed by ix_webhook_deliveries_subscription_status (leading column).
    subscription_id: Mapped[str] = mapped_column(ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(100))  # "<contract_id>:<seq>", the CloudEvents id
    event_row_id: Mapped[int] = mapped_column(Integer)  # contract_events.id
    contract_id: Mapped[str] = mapped_column(String(40), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(60))
    status: Mapped[str] = mapped_column(String(20))  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    response_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    first_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # e.g. {"duration_ms": 12}
