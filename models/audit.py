"""The audit trail: one append-only row per state-changing request (api/platform/audit.py writes them).

Who (``actor``: a user id or ``key:<id>``, their kind and roles, and the person they acted for),
what (``action``: the route's name; ``method`` and ``path``; the ``target`` and, when it concerns one,
the ``contract_id``), when (``at``), which request (``request_id``: the caller's ``X-Request-ID`` or
the one the server made up), and the state before and after as SHA-256 digests (what they cover:
``digest_of``, see api/platform/audit.py).

Append-only: the migration (0009) puts triggers on the table that refuse UPDATE, DELETE (and
TRUNCATE on PostgreSQL) for every role, and no API route changes or removes an entry.

``request_key`` is the server's own id for the request served (never the caller's): unique, so a
request has at most one entry even when writing it is retried.  ``request_id`` is not unique: a
client may send the same ``X-Request-ID`` twice, and that must not refuse its second write.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UTCDateTime


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("request_key", name="uq_audit_log_request_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    request_key: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(100), index=True)  # the principal: user id or "key:<id>"
    actor_kind: Mapped[str] = mapped_column(String(10))  # "user" or "service"
    roles: Mapped[str] = mapped_column(String(200))  # space-separated, as held at the time
    on_behalf_of: Mapped[str | None] = mapped_column(String(100))  # the person an admin or machine acted for
    action: Mapped[str] = mapped_column(String(60), index=True)  # the route's name, e.g. "record_payment"
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(2000))
    target_type: Mapped[str] = mapped_column(String(40))  # "contract", "user", "department", "webhook", ...
    target_id: Mapped[str | None] = mapped_column(String(200))
    contract_id: Mapped[str | None] = mapped_column(String(40), index=True)
    status: Mapped[int | None] = mapped_column(Integer)  # HTTP status answered (null: written with the change)
    digest_of: Mapped[str] = mapped_column(String(10))  # "rows" or "request" (api/platform/audit.py)
    before_digest: Mapped[str | None] = mapped_column(String(64))
    after_digest: Mapped[str | None] = mapped_column(String(64))
