"""Documents held for a contract: generated ones (supplementary agreements) and, later, uploads.

Each document is immutable and versioned per (contract, kind): a new supplementary agreement
is a new row with the next version, never an edit.  ``source_key`` makes generation idempotent:
the activity that renders an amendment's agreement may run twice, the row is written once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UTCDateTime


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("contract_id", "kind", "version", name="uq_documents_contract_kind_version"),
        UniqueConstraint("source_key", name="uq_documents_source_key"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    contract_id: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(40))  # supplementary_agreement, contract_text, attachment
    version: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(300))
    filename: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    source_key: Mapped[str | None] = mapped_column(String(200))  # e.g. "amendment:<contract>:<id>"
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
