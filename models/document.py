"""Documents held for a contract: generated ones (supplementary agreements) and uploads.

Each document is immutable and versioned per (contract, kind, series): a new version is a new
row, never an edit.

* Generated supplementary agreements (activities/documents.py) keep their bytes here
  (``content``, small HTML).  Each is a document of its own, version 1, whose series is its
  ``source_key`` (``amendment:<contract>:<amendment>``): agreement No. 2 is not a new version of
  No. 1 (before migration 0017 they formed one series, agreement N as version N).
  ``source_key`` makes generation idempotent: the activity that renders an amendment's agreement
  may run twice, the row is written once.
* Uploads (api/documents/service.py) keep their bytes in the content-addressed blob store
  (core/storage.py): ``content`` is NULL and ``storage_key`` names the blob (its SHA-256).  The
  contract text is one series per contract (``series`` = "contract_text"); each attachment is a
  series per title (``series`` = the title, case-folded), so uploading "Drawing.pdf" again makes
  version 2 of it.  The same bytes uploaded twice are stored once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UTCDateTime

GENERATED_KINDS = frozenset({"supplementary_agreement"})
UPLOAD_KINDS = ("contract_text", "attachment")


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("contract_id", "kind", "series", "version", name="uq_documents_contract_kind_series_version"),
        UniqueConstraint("source_key", name="uq_documents_source_key"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    contract_id: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(40))  # supplementary_agreement, contract_text, attachment
    # Which document this is a version of, within (contract, kind): see the module docstring.
    series: Mapped[str] = mapped_column(String(300), default="", server_default="")
    version: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(300))
    filename: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes | None] = mapped_column(LargeBinary)  # generated documents only
    storage_key: Mapped[str | None] = mapped_column(String(200))  # uploads: the blob's key in the store
    source_key: Mapped[str | None] = mapped_column(String(200))  # e.g. "amendment:<contract>:<id>"
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    @property
    def uploaded(self) -> bool:
        return self.storage_key is not None
