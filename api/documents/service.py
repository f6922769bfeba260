"""Documents, approval records and the communication log of a contract: what their routes call.

Uploads (``receive_upload``, ``store_upload``)
  The multipart body is parsed as it streams (python-multipart's push parser): the file part goes
  straight into the blob store (core/storage.py), hashed and counted on the way, in 1 MiB
  writes done in a worker thread.  This module never holds a file whole in memory; nothing goes into the
  database but the row.  Refusals:
    * 413 as soon as the file passes ``MAX_UPLOAD_BYTES`` (or at once if Content-Length says so);
    * 415 when the request is not multipart/form-data, when the declared type of the file is not
      one we take (checked before a byte is stored), or when the content is not one we take: the
      type is *sniffed* from the bytes (PDF, PNG, JPEG, ZIP -- told apart into .docx / .xlsx /
      other .zip by its entries -- or UTF-8 text without NUL).  The sniffed type is the one stored
      and served (with ``X-Content-Type-Options: nosniff``); a declared type that is acceptable but
      disagrees (a PNG sent as application/pdf) is logged, not refused: the content decides;
    * 422 for an empty file, a missing file part, an unknown field or kind.
  The blob is made addressable only after all of that passed, so a refused upload leaves nothing
  behind.  The document row is then written with the next version of its series (see
  models/document.py); two uploads racing for the same version are settled by the unique
  constraint and a retry.

Downloads (``download_response``)
  The stored content is verified **before** anything is sent: its SHA-256 is recomputed (one read
  of the blob; the second read, for sending, comes from the page cache) and compared with the
  row's.  A mismatch or a missing blob is a **500** problem (``/problems/document-corrupt``,
  ``/problems/document-missing``) naming the document, and is logged at ERROR: the client gets a
  clear answer instead of a silently wrong file.  The body then streams in 1 MiB chunks and is
  hashed again as it goes; should the file change between the check and the send, the last chunk
  is withheld and the connection cut, so the client sees a short body (Content-Length), never a
  complete wrong one.  ETag is the SHA-256 (If-None-Match answers 304), ``Repr-Digest`` carries it
  too (RFC 9530) for clients that check.  Generated documents (content in the database) are
  verified the same way.

Approval records (``approvals``)
  Read from the contract's event log (the read model table ``contract_events``: events
  ``amendment.approval``, ``amendment.rejected``, ``amendment.withdrawn``, numbered by
  ``amendment.requested``), not from the workflow: it needs no workflow query, lists decisions of
  closed contracts too, and is what the audit of the contract shows.  It lags the workflow by the
  projection (well under a second).

Communications (``add_communication``, ``list_communications``, ``search_communications``)
  Entries recorded by people; attachments are documents of the same contract (422 otherwise).
  Text search is a case-insensitive substring match on subject, body and counterpart (ILIKE on
  PostgreSQL, lower() LIKE on SQLite), limited to the contracts the caller may see.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import logging
import re
import unicodedata
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO

from anyio import to_thread
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from api.auth.policy import not_found, visible_contracts
from api.auth.principal import Principal
from api.documents import schemas as s
from api.platform.problems import Problem
from core.storage import CHUNK, BlobMissing, BlobStore, BlobTooLarge, BlobWriter, StoredBlob
from models import Communication, Contract, ContractEvent, Document
from models.document import UPLOAD_KINDS

log = logging.getLogger("api.documents")

FIELD_MAX_BYTES = 8 * 1024  # a form field (kind, title)
FORM_OVERHEAD_BYTES = 64 * 1024  # what a multipart body may add around the file
TITLE_MAX = 300
FILENAME_MAX = 200
SNIFF_BYTES = 8 * 1024

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/unknown"})
# Sniffed type -> the declared types that agree with it.
DECLARED_OK = {
    "application/pdf": {"application/pdf", "application/x-pdf"},
    "image/png": {"image/png"},
    "image/jpeg": {"image/jpeg", "image/jpg", "image/pjpeg"},
    DOCX: {DOCX, "application/zip", "application/x-zip-compressed"},
    XLSX: {XLSX, "application/zip", "application/x-zip-compressed"},
    "application/zip": {"application/zip", "application/x-zip-compressed"},
    "text/plain": {"text/plain", "text/csv"},
}
ACCEPTED_DECLARED = frozenset().union(*DECLARED_OK.values())
EXTENSIONS = {"application/pdf": ".pdf", "image/png": ".png", "image/jpeg": ".jpg", DOCX: ".docx", XLSX: ".xlsx",
              "application/zip": ".zip", "text/plain": ".txt", "text/csv": ".csv"}
ALLOWED_DESCRIPTION = "PDF, PNG, JPEG, .docx, .xlsx, .zip or UTF-8 text"


def _unsupported(detail: str) -> Problem:
    return Problem(415, f"{detail}; accepted: {ALLOWED_DESCRIPTION}", slug="unsupported-media-type")


def _invalid(field_name: str, message: str) -> Problem:
    return Problem(422, f"{field_name}: {message}", slug="validation",
                   errors=[{"field": field_name, "message": message}])


def _too_large(limit: int) -> Problem:
    return Problem(413, f"the file is larger than the limit of {limit} bytes ({limit / 1048576:g} MiB)",
                   slug="document-too-large", limit=limit)


# ====================================================================== content sniffing
class ContentInspector:
    """Decides what the bytes are while they stream: a magic number in the first bytes, else UTF-8
    text (checked to the end, without NUL)."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.kind: str | None = None  # "pdf", "png", "jpeg", "zip", "text"
        self._text = codecs.getincrementaldecoder("utf-8")("strict")
        self._finished = False

    def feed(self, data: bytes) -> None:
        if self.kind is None:
            need = SNIFF_BYTES - len(self.head)
            self.head += data[:need]
            if len(self.head) < SNIFF_BYTES:
                return
            self._decide()
            self._check_text(bytes(self.head))
            data = data[need:]
        self._check_text(data)

    def _decide(self) -> None:
        head = bytes(self.head)
        if b"%PDF-" in head[:1024]:  # readers accept up to 1 KiB before the header
            self.kind = "pdf"
        elif head.startswith(b"\x89PNG\r\n\x1a\n"):
            self.kind = "png"
        elif head.startswith(b"\xff\xd8\xff"):
            self.kind = "jpeg"
        elif head.startswith(b"PK\x03\x04"):
            self.kind = "zip"
        elif b"\x00" not in head:
            self.kind = "text"  # checked to the last byte: UTF-8, no NUL
        else:
            raise _unsupported("the content is not a document type this service stores (binary data)")

    def _check_text(self, data: bytes, final: bool = False) -> None:
        if self.kind != "text":
            return
        if b"\x00" in data:
            raise _unsupported("the content is binary (it has NUL bytes), not text")
        try:
            self._text.decode(data, final=final)
        except UnicodeDecodeError:
            raise _unsupported("the content is neither a known document type nor UTF-8 text") from None

    def finish(self) -> str:
        """The sniffed kind, once every byte was fed."""
        if not self._finished:
            if self.kind is None:
                self._decide()
                self._check_text(bytes(self.head))
            self._check_text(b"", final=True)
            self._finished = True
        assert self.kind is not None
        return self.kind


def _zip_media_type(f: BinaryIO) -> str:
    """.docx, .xlsx or another ZIP, from the archive's directory; a broken archive is refused."""
    try:
        with zipfile.ZipFile(f) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise _unsupported("the content starts like a ZIP archive but is not a readable one") from None
    if "[Content_Types].xml" in names and "word/document.xml" in names:
        return DOCX
    if "[Content_Types].xml" in names and "xl/workbook.xml" in names:
        return XLSX
    return "application/zip"


# ====================================================================== receiving an upload
@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    content_type: str = ""
    data: bytearray = field(default_factory=bytearray)
    headers: dict[bytes, bytes] = field(default_factory=dict)


@dataclass
class Upload:
    """A received (not yet committed) upload: the file in a blob writer, the form fields."""

    writer: BlobWriter
    inspector: ContentInspector
    filename: str
    declared_type: str
    fields: dict[str, str]
    size: int


class _FileSink:
    """Where the file part's bytes go: the inspector and the blob writer (called in a thread)."""

    def __init__(self, writer: BlobWriter, limit: int) -> None:
        self.writer = writer
        self.inspector = ContentInspector()
        self.limit = limit

    def write(self, data: bytes) -> None:
        if self.writer.size + len(data) > self.limit:
            raise _too_large(self.limit)
        self.inspector.feed(data)
        try:
            self.writer.write(data)
        except BlobTooLarge:
            raise _too_large(self.limit) from None


async def receive_upload(request: Request, store: BlobStore, limit: int) -> Upload:
    """Parse the multipart body as it arrives; the file goes into a blob writer.  Raises a
    Problem (413, 415, 422) as soon as the request is known to be refused."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise Problem(415, "send the document as multipart/form-data with a 'file' part (and optionally 'kind', "
                           "'title')", slug="unsupported-media-type")
    boundary = params.get(b"boundary")
    if not boundary:
        raise _invalid("body", "the multipart/form-data content type has no boundary")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + FORM_OVERHEAD_BYTES:
        raise _too_large(limit)
    receiver = _Receiver(boundary, store, limit)
    stream = request.stream()
    try:
        try:
            async for chunk in stream:
                for i in range(0, len(chunk), CHUNK):
                    await receiver.feed(chunk[i:i + CHUNK])
        except ClientDisconnect:
            raise Problem(400, "the client left before the upload was complete", slug="upload-incomplete") from None
        return receiver.result()
    except BaseException:
        if receiver.sink is not None:
            receiver.sink.writer.abort()
        await _drain(stream, limit)
        raise


class _Receiver:
    """python-multipart's push parser turned into parts: form fields kept (small), the file part
    streamed into the blob store in CHUNK-sized writes made in a worker thread."""

    def __init__(self, boundary: bytes, store: BlobStore, limit: int) -> None:
        self.store = store
        self.limit = limit
        self.events: list[tuple[str, Any]] = []
        self._header_name = bytearray()
        self._header_value = bytearray()
        self.part = _Part()
        self.file_part: _Part | None = None
        self.sink: _FileSink | None = None
        self.buffer = bytearray()
        self.fields: dict[str, str] = {}
        self.finished = False
        self.parser = MultipartParser(boundary, {
            "on_part_begin": lambda: self.events.append(("begin", None)),
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": lambda: self.events.append(("headers", None)),
            "on_part_data": lambda data, start, end: self.events.append(("data", data[start:end])),
            "on_part_end": lambda: self.events.append(("end", None)),
            "on_end": lambda: self.events.append(("done", None)),
        })

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value.extend(data[start:end])
        if len(self._header_value) > FIELD_MAX_BYTES:
            raise _invalid("body", f"a part header is longer than {FIELD_MAX_BYTES} bytes")

    def _on_header_end(self) -> None:
        self.events.append(("header", (bytes(self._header_name).lower(), bytes(self._header_value))))
        self._header_name.clear()
        self._header_value.clear()

    async def feed(self, data: bytes) -> None:
        try:
            self.parser.write(data)
        except MultipartParseError:
            raise _invalid("body", "the multipart body is malformed") from None
        events, self.events = self.events, []
        for kind, value in events:
            if kind == "begin":
                self.part = _Part()
            elif kind == "header":
                self.part.headers[value[0]] = value[1]
            elif kind == "headers":
                self._start_part(self.part)
            elif kind == "data":
                await self._data(self.part, value)
            elif kind == "end":
                if self.part is self.file_part:
                    await self._flush()
                else:
                    self.fields[self.part.name] = _field_text(self.part)
            elif kind == "done":
                self.finished = True

    def _start_part(self, part: _Part) -> None:
        disposition = part.headers.get(b"content-disposition", b"").decode("latin-1")
        _, opts = parse_options_header(disposition)
        part.name = _decode(opts.get(b"name", b""))
        if part.name == "file":
            if self.file_part is not None:
                raise _invalid("file", "send one file per request")
            part.filename = _decode(opts.get(b"filename", b""))
            declared = parse_options_header(part.headers.get(b"content-type", b"").decode("latin-1"))[0]
            part.content_type = declared.decode("latin-1")
            if part.content_type not in GENERIC_TYPES and part.content_type not in ACCEPTED_DECLARED:
                raise _unsupported(f"files of type {part.content_type!r} are not accepted")
            self.file_part = part
            self.sink = _FileSink(self.store.writer(self.limit), self.limit)
        elif part.name in ("kind", "title"):
            if part.name in self.fields:
                raise _invalid(part.name, "given twice")
        else:
            raise _invalid(part.name or "body", "unknown form field; send 'file', 'kind' and 'title'")

    async def _data(self, part: _Part, data: bytes) -> None:
        if part is self.file_part:
            self.buffer.extend(data)
            if len(self.buffer) >= CHUNK:
                await self._flush()
            return
        if len(part.data) + len(data) > FIELD_MAX_BYTES:
            raise _invalid(part.name, f"longer than {FIELD_MAX_BYTES} bytes")
        part.data.extend(data)

    async def _flush(self) -> None:
        if self.buffer and self.sink is not None:
            data = bytes(self.buffer)
            self.buffer.clear()
            await run_in_threadpool(self.sink.write, data)

    def result(self) -> Upload:
        if not self.finished:
            raise _invalid("body", "the multipart body ended early (no closing boundary)")
        if self.file_part is None or self.sink is None:
            raise _invalid("file", "the request has no 'file' part")
        if self.sink.writer.size == 0:
            raise _invalid("file", "the file is empty")
        self.sink.inspector.finish()
        return Upload(writer=self.sink.writer, inspector=self.sink.inspector,
                      filename=_clean_filename(self.file_part.filename or ""),
                      declared_type=self.file_part.content_type, fields=self.fields, size=self.sink.writer.size)


async def _drain(stream: AsyncIterator[bytes], budget: int) -> None:
    """Read (and drop) what is left of a refused request, up to ``budget`` bytes, so the client
    reads our answer instead of failing to send the rest; beyond that the server closes."""
    try:
        read = 0
        async for chunk in stream:
            read += len(chunk)
            if read > budget:
                return
    except Exception:  # noqa: BLE001 - the client left, or the stream was consumed
        return


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _field_text(part: _Part) -> str:
    try:
        text = bytes(part.data).decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(part.name, "not UTF-8 text") from None
    if "\x00" in text:
        raise _invalid(part.name, "NUL characters are not allowed in text")
    return text


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean_filename(name: str) -> str:
    """The last path segment, without control characters, at most FILENAME_MAX characters."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1])
    name = _CONTROL.sub("", name).strip().strip(".") or ""
    if len(name) > FILENAME_MAX:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: FILENAME_MAX - len(ext) - 1] + "." + ext) if dot and len(ext) < 20 else name[:FILENAME_MAX]
    return name


# ====================================================================== storing an upload
def check_contract(sessions: sessionmaker[Session], contract_id: str) -> None:
    """404 for a contract that does not exist (the policy lets see-all roles through unchecked)."""
    with sessions() as session:
        if session.get(Contract, contract_id) is None:
            raise not_found(contract_id)


def _media_type(upload: Upload, kind: str, f: BinaryIO) -> str:
    if kind == "zip":
        media = _zip_media_type(f)
    else:
        media = {"pdf": "application/pdf", "png": "image/png", "jpeg": "image/jpeg", "text": "text/plain"}[kind]
    declared = upload.declared_type
    if declared not in GENERIC_TYPES and declared not in DECLARED_OK[media]:
        # Both are types we take (an unacceptable declared type was refused before the upload
        # streamed): the content decides, as it decides what the download says.
        log.info("upload declared as %s is %s by its content; stored as the latter", declared, media)
    if media == "text/plain":
        media = ("text/csv" if declared == "text/csv" else "text/plain") + "; charset=utf-8"
    return media


def _series(kind: str, title: str) -> str:
    return "contract_text" if kind == "contract_text" else " ".join(title.casefold().split())[:TITLE_MAX]


def store_upload(sessions: sessionmaker[Session], upload: Upload, contract_id: str, by: str) -> Document:
    """Validate the fields, commit the blob (after the last content check), write the row.
    Synchronous: run in a thread."""
    kind = upload.fields.get("kind", "attachment")
    if kind not in UPLOAD_KINDS:
        upload.writer.abort()
        raise _invalid("kind", f"must be one of {', '.join(UPLOAD_KINDS)}")
    title = " ".join(upload.fields.get("title", "").split())
    if len(title) > TITLE_MAX:
        upload.writer.abort()
        raise _invalid("title", f"at most {TITLE_MAX} characters")
    media: list[str] = []
    sniffed = upload.inspector.finish()
    blob: StoredBlob = upload.writer.commit(lambda f: media.append(_media_type(upload, sniffed, f)))
    media_type = media[0]
    filename = upload.filename or f"{kind}{EXTENSIONS.get(media_type.split(';')[0], '')}"
    title = title or filename
    series = _series(kind, title)
    for attempt in range(5):
        try:
            with sessions.begin() as session:
                version = (session.execute(select(func.max(Document.version)).where(
                    Document.contract_id == contract_id, Document.kind == kind, Document.series == series)).scalar()
                    or 0) + 1
                doc = Document(
                    id=uuid.uuid4().hex[:16], contract_id=contract_id, kind=kind, series=series, version=version,
                    title=title, filename=filename, media_type=media_type, size=blob.size, sha256=blob.sha256,
                    content=None, storage_key=blob.sha256, source_key=None, created_by=by,
                    created_at=datetime.now(timezone.utc),
                )
                session.add(doc)
            log.info("document %s stored: contract %s %s v%d, %d bytes, sha256 %s%s", doc.id, contract_id, kind,
                     version, blob.size, blob.sha256, " (content already stored)" if blob.existed else "")
            return doc
        except IntegrityError:
            if attempt == 4:
                raise Problem(409, "another upload of this document was stored at the same moment; retry",
                              slug="document-version-conflict") from None
    raise AssertionError("unreachable")


# ====================================================================== reading documents
def _download_url(d: Document) -> str:
    return f"/contracts/{d.contract_id}/documents/{d.id}/download"


def document_out(d: Document) -> s.DocumentOut:
    base = f"/contracts/{d.contract_id}/documents/{d.id}"
    return s.DocumentOut(
        id=d.id, contract_id=d.contract_id, kind=d.kind, version=d.version, title=d.title, filename=d.filename,
        media_type=d.media_type, size=d.size, sha256=d.sha256, uploaded=d.storage_key is not None,
        created_by=d.created_by, created_at=d.created_at, download_url=f"{base}/download",
        versions_url=f"{base}/versions",
    )


def list_documents(sessions: sessionmaker[Session], contract_id: str) -> list[s.DocumentOut]:
    """The contract's documents, uploaded and generated, by kind and version."""
    check_contract(sessions, contract_id)
    with sessions() as session:
        rows = session.execute(
            select(Document).where(Document.contract_id == contract_id).order_by(Document.kind, Document.version)
        ).scalars().all()
        return [document_out(d) for d in rows]


def generated_document(sessions: sessionmaker[Session], contract_id: str, document_id: str) -> Document:
    """A document the service generated (a supplementary agreement), with its content; an upload is
    a 404 pointing at its download (its bytes are in the blob store)."""
    check_contract(sessions, contract_id)
    with sessions() as session:
        doc = session.get(Document, document_id)
        if doc is None or doc.contract_id != contract_id:
            raise Problem(404, f"contract {contract_id} has no document {document_id!r}", slug="document-not-found")
        if doc.content is None:
            url = f"/contracts/{contract_id}/documents/{document_id}/download"
            raise Problem(404, f"document {document_id!r} was uploaded: download it from {url}",
                          slug="document-not-found", download_url=url)
        session.expunge(doc)
        return doc


def get_document(sessions: sessionmaker[Session], contract_id: str, document_id: str) -> Document:
    with sessions() as session:
        doc = session.get(Document, document_id)
        if doc is None or doc.contract_id != contract_id:
            if session.get(Contract, contract_id) is None:
                raise not_found(contract_id)
            raise Problem(404, f"contract {contract_id} has no document {document_id!r}", slug="document-not-found")
        session.expunge(doc)
        return doc


def versions(sessions: sessionmaker[Session], contract_id: str, document_id: str) -> list[s.DocumentOut]:
    doc = get_document(sessions, contract_id, document_id)
    with sessions() as session:
        rows = session.execute(select(Document).where(
            Document.contract_id == contract_id, Document.kind == doc.kind, Document.series == doc.series,
        ).order_by(Document.version)).scalars().all()
        return [document_out(d) for d in rows]


def _log_corrupt(doc: Document, actual: str, size: int) -> None:
    log.error("stored document %s (contract %s, %s) is corrupt: sha256 %s, %d bytes on storage; expected %s, %d bytes",
              doc.id, doc.contract_id, doc.filename, actual, size, doc.sha256, doc.size)


def _corrupt(doc: Document, actual: str, size: int) -> Problem:
    _log_corrupt(doc, actual, size)
    return Problem(500, f"stored document {doc.id} is corrupt: its content no longer matches its SHA-256 "
                        f"({doc.sha256}); it has been logged, restore it from backup or upload it again",
                   slug="document-corrupt", document_id=doc.id, expected_sha256=doc.sha256)


def _hash_blob(store: BlobStore, key: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with store.open(key) as f:
        while block := f.read(CHUNK):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _content_disposition(filename: str, inline: bool) -> str:
    from urllib.parse import quote

    ascii_name = filename.encode("ascii", "ignore").decode().replace('"', "").replace("\\", "") or "document"
    disposition = "inline" if inline else "attachment"
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _headers(doc: Document, inline: bool) -> dict[str, str]:
    digest = base64.b64encode(bytes.fromhex(doc.sha256)).decode()
    return {
        "ETag": f'"{doc.sha256}"',
        "X-Content-SHA256": doc.sha256,
        "Repr-Digest": f"sha-256=:{digest}:",
        "Content-Disposition": _content_disposition(doc.filename, inline),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-cache",
    }


def _not_modified(request: Request, doc: Document) -> bool:
    wanted = request.headers.get("if-none-match", "")
    tags = {t.strip().removeprefix("W/") for t in wanted.split(",")}
    return "*" in tags or f'"{doc.sha256}"' in tags


async def download_response(request: Request, contract_id: str, document_id: str, *, inline: bool = False) -> Response:
    """The document's content, verified against its SHA-256 first, then streamed (see the module
    docstring).  Works for uploaded and generated documents."""
    sessions = request.app.state.sessions
    doc = await run_in_threadpool(get_document, sessions, contract_id, document_id)
    headers = _headers(doc, inline)
    if _not_modified(request, doc):
        return Response(status_code=304, headers={"ETag": headers["ETag"], "Cache-Control": headers["Cache-Control"]})
    if doc.storage_key is None:  # generated: the bytes are in the row
        content = doc.content or b""
        actual = hashlib.sha256(content).hexdigest()
        if actual != doc.sha256:
            raise _corrupt(doc, actual, len(content))
        return Response(content=content, media_type=doc.media_type, headers=headers)
    store: BlobStore = request.app.state.blobs
    try:
        actual, size = await run_in_threadpool(_hash_blob, store, doc.storage_key)
    except BlobMissing:
        log.error("stored document %s (contract %s) is missing: no blob %s", doc.id, doc.contract_id, doc.storage_key)
        raise Problem(500, f"stored document {doc.id} is missing from storage; it has been logged, restore it from "
                           "backup or upload it again", slug="document-missing", document_id=doc.id) from None
    if actual != doc.sha256 or size != doc.size:
        raise _corrupt(doc, actual, size)
    headers["Content-Length"] = str(doc.size)
    return StreamingResponse(_stream_verified(store, doc), media_type=doc.media_type, headers=headers)


async def _stream_verified(store: BlobStore, doc: Document) -> AsyncIterator[bytes]:
    """The blob in chunks, hashed as it goes; the last chunk is sent only if the whole matches."""
    assert doc.storage_key is not None  # an upload: generated documents are served from their content
    f = await to_thread.run_sync(store.open, doc.storage_key)
    try:
        h, sent = hashlib.sha256(), 0
        pending = await to_thread.run_sync(f.read, CHUNK)
        while pending:
            h.update(pending)
            sent += len(pending)
            if sent > doc.size:
                break
            following = await to_thread.run_sync(f.read, CHUNK)
            if not following:
                break
            yield pending
            pending = following
        if sent != doc.size or h.hexdigest() != doc.sha256:
            _log_corrupt(doc, h.hexdigest(), sent)
            raise OSError(f"document {doc.id} changed on storage while it was being sent; connection cut")
        yield pending
    finally:
        await to_thread.run_sync(f.close)


# ====================================================================== approval records
APPROVAL_EVENTS = {"amendment.approval": "approved", "amendment.rejected": "rejected",
                   "amendment.withdrawn": "withdrawn"}


def approvals(sessions: sessionmaker[Session], contract_id: str,
              amendment_id: str | None = None) -> list[s.ApprovalOut]:
    with sessions() as session:
        if session.get(Contract, contract_id) is None:
            raise not_found(contract_id)
        rows = session.execute(select(ContractEvent).where(
            ContractEvent.contract_id == contract_id,
            ContractEvent.type.in_(["amendment.requested", *APPROVAL_EVENTS]),
        ).order_by(ContractEvent.seq)).scalars().all()
    numbers: dict[str, int] = {}
    out: list[s.ApprovalOut] = []
    for e in rows:
        data = e.data or {}
        aid = str(data.get("amendment_id", ""))
        if e.type == "amendment.requested":
            if isinstance(data.get("number"), int):
                numbers[aid] = data["number"]
            continue
        if amendment_id is not None and aid != amendment_id:
            continue
        out.append(s.ApprovalOut(
            amendment_id=aid, amendment_number=numbers.get(aid), role=str(data.get("role") or ""),
            by=str(data.get("by") or e.actor), decision=APPROVAL_EVENTS[e.type], comment=str(data.get("comment") or ""),
            at=e.at, seq=e.seq,
        ))
    return out


# ====================================================================== communications
def _outs(session: Session, rows: list[Communication]) -> list[s.CommunicationOut]:
    """Entries with their attachments (one query for all of them)."""
    ids = {i for c in rows for i in (c.attachments or [])}
    docs = {d.id: d for d in session.execute(select(Document).where(Document.id.in_(ids))).scalars()} if ids else {}
    out = []
    for c in rows:
        attached = [d for i in (c.attachments or [])
                    if (d := docs.get(i)) is not None and d.contract_id == c.contract_id]
        out.append(s.CommunicationOut(
            id=c.id, contract_id=c.contract_id, kind=c.kind, subject=c.subject, body=c.body,
            counterpart=c.counterpart, occurred_at=c.occurred_at, recorded_by=c.recorded_by, created_at=c.created_at,
            attachments=[s.AttachmentOut(id=d.id, title=d.title, filename=d.filename, media_type=d.media_type,
                                         size=d.size, download_url=_download_url(d))
                         for d in attached],
        ))
    return out


def add_communication(sessions: sessionmaker[Session], contract_id: str, body: s.CommunicationIn,
                      by: str) -> s.CommunicationOut:
    ids = list(dict.fromkeys(body.attachments))
    now = datetime.now(timezone.utc)
    with sessions.begin() as session:
        if session.get(Contract, contract_id) is None:
            raise not_found(contract_id)
        if ids:
            found = set(session.execute(select(Document.id).where(
                Document.contract_id == contract_id, Document.id.in_(ids))).scalars())
            missing = [i for i in ids if i not in found]
            if missing:
                names = ", ".join(map(repr, missing))
                raise _invalid("attachments", f"contract {contract_id} has no document {names}; upload it first "
                                              "(POST /contracts/{id}/documents)")
        c = Communication(
            contract_id=contract_id, kind=body.kind, subject=" ".join(body.subject.split()), body=body.body,
            counterpart=(body.counterpart or "").strip() or None, occurred_at=body.occurred_at or now,
            recorded_by=by, created_at=now, attachments=ids,
        )
        session.add(c)
        session.flush()
        return _outs(session, [c])[0]


def _text_filter(q: str):
    q = q.strip()
    return or_(Communication.subject.icontains(q, autoescape=True), Communication.body.icontains(q, autoescape=True),
               Communication.counterpart.icontains(q, autoescape=True))


def list_communications(sessions: sessionmaker[Session], contract_id: str, *, q: str | None, kind: str | None,
                        limit: int, offset: int) -> s.CommunicationPage:
    with sessions() as session:
        if session.get(Contract, contract_id) is None:
            raise not_found(contract_id)
        where = [Communication.contract_id == contract_id]
        if q and q.strip():
            where.append(_text_filter(q))
        if kind:
            where.append(Communication.kind == kind)
        return _page(session, where, limit, offset)


def search_communications(sessions: sessionmaker[Session], viewer: Principal, *, q: str, kind: str | None,
                          limit: int, offset: int) -> s.CommunicationPage:
    if len(q.strip()) < 2:
        raise _invalid("q", "search for at least 2 characters")
    where: list[Any] = [_text_filter(q)]
    if kind:
        where.append(Communication.kind == kind)
    visible = visible_contracts(viewer)
    if visible is not None:
        where.append(Communication.contract_id.in_(select(Contract.id).where(visible)))
    with sessions() as session:
        return _page(session, where, limit, offset)


def _page(session: Session, where: list[Any], limit: int, offset: int) -> s.CommunicationPage:
    total = session.execute(select(func.count()).select_from(Communication).where(*where)).scalar_one()
    rows = session.execute(select(Communication).where(*where)
                           .order_by(Communication.occurred_at.desc(), Communication.id.desc())
                           .limit(limit).offset(offset)).scalars().all()
    return s.CommunicationPage(items=_outs(session, list(rows)), total=total, limit=limit,
                               offset=offset)
