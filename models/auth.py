"""API keys: how machines (ERP, the finance feed, CRM, operators' scripts) authenticate.

A key belongs to a named service account and carries its roles (``integration:finance``,
``integration:erp``, ``integration:crm`` or ``admin``).  The secret is shown once, at creation;
only its SHA-256 is kept.  Keys are revoked, never deleted, so the audit trail can always say
whose key made a change.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UTCDateTime


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the public part of ck_<id>_<secret>
    name: Mapped[str] = mapped_column(String(100))  # the service account, e.g. "erp"
    roles: Mapped[str] = mapped_column(String(200))  # space-separated
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class RevokedToken(Base):
    """An access token ended before its expiry (logged out).  Kept only until it would have
    expired anyway: after that the token's own ``exp`` refuses it."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)  # the token's id claim
    user_id: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
