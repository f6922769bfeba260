"""People and organisation: who owns what, who their manager is, where a department's messages go.

Reminders go to an item's owner; escalations climb ``manager_id`` (the chain "copy the manager"
follows) and reach the department head; hand-offs land on a department's default assignee
(finance's invoicing owner, say).  Users and departments refer to each other, so the
department → user keys are created after both tables (``use_alter``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UTCDateTime


class Department(Base):
    __tablename__ = "departments"

    key: Mapped[str] = mapped_column(String(60), primary_key=True)  # "sales", "finance"... as on milestones
    name: Mapped[str] = mapped_column(String(200))
    head_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", use_alter=True))
    # Who gets the department's hand-offs when a milestone names no one (finance: invoicing owner).
    default_assignee_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", use_alter=True))
    # The department's chat-bot webhook for notifications, and its signing secret.
    webhook_url: Mapped[str | None] = mapped_column(String(500))
    webhook_secret: Mapped[str | None] = mapped_column(String(200))


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)  # the login, e.g. "li.wei"
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    department: Mapped[str | None] = mapped_column(ForeignKey("departments.key"), index=True)
    manager_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)
    locale: Mapped[str] = mapped_column(String(5), default="zh")  # "zh" or "en": the language of messages
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Login: an argon2id hash (core/security.py); None = cannot log in with a password.
    password_hash: Mapped[str | None] = mapped_column(String(200), default=None)
    # Roles beyond the ones the department and the reporting line give (api/auth/policy.py):
    # space-separated, today only "admin".
    extra_roles: Mapped[str] = mapped_column(String(200), default="", server_default="")
