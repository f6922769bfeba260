"""The communication log of a contract: notes, emails sent and received, calls and meetings.

Recorded by people (``recorded_by`` is who wrote the entry, from their credentials); each entry
may point at documents of the same contract as attachments (uploaded through the document
routes first).  Searchable by text (subject, body, counterpart): GET /communications?q=.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UTCDateTime

COMMUNICATION_KINDS = ("note", "email_in", "email_out", "call", "meeting")


class Communication(Base):
    __tablename__ = "communications"
    __table_args__ = (Index("ix_communications_contract_occurred", "contract_id", "occurred_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    contract_id: Mapped[str] = mapped_column(String(40))  # indexed: ix_communications_contract_occurred
    kind: Mapped[str] = mapped_column(String(20))  # note, email_in, email_out, call, meeting
    subject: Mapped[str] = mapped_column(String(300), default="")
    body: Mapped[str] = mapped_column(Text)
    counterpart: Mapped[str | None] = mapped_column(String(200))  # who outside: "Mr Chen, Ningbo Precision"
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attachments: Mapped[list[str]] = mapped_column(JSON, default=list)  # document ids of the same contract
