"""The ``store_agreement`` activity: renders a supplementary agreement (补充协议) and stores it.

Idempotent: the document's ``source_key`` is unique per (contract, amendment), so a retried or
replayed activity finds the row it wrote and returns its id instead of writing a second one.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity

from core.documents import render_agreement
from models import Document
from workflows.types import AgreementRequest

KIND = "supplementary_agreement"


class DocumentActivities:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    @activity.defn(name="store_agreement")
    def store_agreement(self, r: AgreementRequest) -> str:
        source_key = f"amendment:{r.contract_id}:{r.amendment_id}"
        existing = self._existing(source_key)
        if existing is not None:
            return existing
        html = render_agreement(r).encode("utf-8")
        try:
            with self._sessions.begin() as session:
                # Each agreement is a document of its own (its series is its amendment), not the
                # next version of the one before: agreement No. 2 does not replace No. 1.
                doc = Document(
                    id=uuid.uuid4().hex[:16],
                    contract_id=r.contract_id,
                    kind=KIND,
                    series=source_key,
                    version=1,
                    title=f"Supplementary agreement No. {r.amendment_number} / 补充协议（第{r.amendment_number}号）",
                    filename=f"{r.contract_id}-supplementary-agreement-{r.amendment_number}.html",
                    media_type="text/html; charset=utf-8",
                    size=len(html),
                    sha256=hashlib.sha256(html).hexdigest(),
                    content=html,
                    source_key=source_key,
                    created_by="system",
                    created_at=datetime.now(timezone.utc),
                )
                session.add(doc)
                doc_id = doc.id
        except IntegrityError:
            # A concurrent attempt (or an earlier one whose reply was lost) wrote it first.
            existing = self._existing(source_key)
            if existing is None:
                raise
            return existing
        return doc_id

    def _existing(self, source_key: str) -> str | None:
        with self._sessions() as session:
            return session.execute(select(Document.id).where(Document.source_key == source_key)).scalar_one_or_none()
