"""Document uploads and downloads, approval records and the communication log (issue #5).

Under /contracts/{contract_id}: the policy (api/auth/policy.py) answers 404 for a contract the caller
may not see, before anything here runs.  How uploads are received, downloads verified, approval
records read and communications searched: api/documents/service.py.
"""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from api.auth.policy import principal_of
from api.documents import schemas as s
from api.documents import service as d
from api.documents.schemas import CommunicationKind
from api.platform.fields import MAX_INT
from api.platform.problems import PROBLEM_RESPONSE, Responses

router = APIRouter(tags=["documents"])
ContractId = Annotated[str, Path(min_length=1, max_length=40, description="Contract id")]
DocumentId = Annotated[str, Path(min_length=1, max_length=40, description="Document id")]
_problem = PROBLEM_RESPONSE
ERRORS: Responses = {403: _problem, 404: _problem, 422: _problem, 503: _problem}

_MEDIA = ", ".join(s.ALLOWED_MEDIA_TYPES)
DOWNLOAD_TYPES = [*s.ALLOWED_MEDIA_TYPES, "text/html"]  # text/html: generated supplementary agreements
UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": f"The document. Its type is read from its content and must be one of: "
                                        f"{_MEDIA}; a declared type must agree. At most MAX_UPLOAD_BYTES "
                                        "(25 MiB by default), not empty."},
                "kind": {"type": "string", "enum": list(get_args(s.UploadKind)), "default": "attachment",
                         "description": "contract_text: the contract itself (one series per contract); "
                                        "attachment: anything else (a series per title)"},
                "title": {"type": "string", "maxLength": d.TITLE_MAX,
                          "description": "Default: the file name. An upload with the title of an earlier "
                                         "attachment is its next version."},
            },
            "additionalProperties": False,
        },
        "encoding": {"file": {"contentType": _MEDIA + ", application/octet-stream"}},
    }},
}


@router.post(
    "/contracts/{contract_id}/documents",
    status_code=status.HTTP_201_CREATED,
    response_model=s.DocumentOut,
    responses={**ERRORS, 409: _problem, 413: {**_problem, "description": "The file is larger than MAX_UPLOAD_BYTES"},
               415: {**_problem, "description": "Not multipart/form-data, or a file type that is not accepted"}},
    openapi_extra={"requestBody": UPLOAD_BODY},
)
async def upload_document(contract_id: ContractId, request: Request):
    """Upload the contract text or an attachment (multipart/form-data: ``file``, optional ``kind``
    and ``title``).  Stored by its SHA-256 (the same bytes once), versioned: uploading the
    contract text again, or an attachment with the same title, makes the next version."""
    principal = principal_of(request)
    sessions = request.app.state.sessions
    settings = request.app.state.settings
    await run_in_threadpool(d.check_contract, sessions, contract_id)
    upload = await d.receive_upload(request, request.app.state.blobs, settings.max_upload_bytes)
    doc = await run_in_threadpool(d.store_upload, sessions, upload, contract_id, principal.id)
    out = d.document_out(doc)
    return JSONResponse(out.model_dump(mode="json"), status_code=201, headers={"Location": out.download_url})


@router.get("/contracts/{contract_id}/documents", response_model=list[s.DocumentOut], responses={**ERRORS, 409: _problem})
def contract_documents(contract_id: ContractId, request: Request):
    """The contract's documents: uploads and generated supplementary agreements, by kind and version."""
    return d.list_documents(request.app.state.sessions, contract_id)


@router.get("/contracts/{contract_id}/documents/{document_id}/content",
            responses={200: {"content": {"text/html": {}}}, **ERRORS, 409: _problem})
def document_content(contract_id: ContractId, document_id: DocumentId, request: Request):
    """A generated document's content (HTML), with its SHA-256 as ETag."""
    doc = d.generated_document(request.app.state.sessions, contract_id, document_id)
    return Response(
        content=doc.content,
        media_type=doc.media_type,
        headers={"ETag": f'"{doc.sha256}"', "Content-Disposition": f'inline; filename="{doc.filename}"',
                 "X-Content-SHA256": doc.sha256},
    )


@router.get(
    "/contracts/{contract_id}/documents/{document_id}/download",
    responses={200: {"description": "The document's bytes, verified against its SHA-256 (ETag)",
                     "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in DOWNLOAD_TYPES}},
               304: {"description": "Not modified (If-None-Match matched the ETag)"},
               500: {**_problem, "description": "The stored content no longer matches its SHA-256 (corrupt) or is "
                                                "missing"},
               **ERRORS},
)
async def download_document(contract_id: ContractId, document_id: DocumentId, request: Request):
    """Download an uploaded or generated document.  Its content is checked against the SHA-256
    recorded at upload before a byte is sent; a mismatch is a 500 ``document-corrupt`` problem."""
    return await d.download_response(request, contract_id, document_id)


@router.get("/contracts/{contract_id}/documents/{document_id}/versions", response_model=list[s.DocumentOut],
            responses=ERRORS)
def document_versions(contract_id: ContractId, document_id: DocumentId, request: Request):
    """Every version of this document (same contract, kind and series), oldest first."""
    return d.versions(request.app.state.sessions, contract_id, document_id)


@router.get("/contracts/{contract_id}/approvals", response_model=list[s.ApprovalOut], responses=ERRORS)
def list_approvals(
    contract_id: ContractId,
    request: Request,
    amendment_id: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
):
    """Every decision on the contract's amendments: who, for which role, approved / rejected /
    withdrew, their comment and when; oldest first (from the contract's event log)."""
    return d.approvals(request.app.state.sessions, contract_id, amendment_id)


@router.post("/contracts/{contract_id}/communications", status_code=status.HTTP_201_CREATED,
             response_model=s.CommunicationOut, responses=ERRORS)
def add_communication(contract_id: ContractId, body: s.CommunicationIn, request: Request):
    """Log a note, an email sent or received, a call or a meeting; ``attachments`` are ids of
    documents of this contract.  Recorded as the caller."""
    return d.add_communication(request.app.state.sessions, contract_id, body, principal_of(request).id)


@router.get("/contracts/{contract_id}/communications", response_model=s.CommunicationPage, responses=ERRORS)
def list_communications(
    contract_id: ContractId,
    request: Request,
    q: Annotated[str | None, Query(min_length=1, max_length=200, description="Text in subject, body or counterpart "
                                                                            "(case-insensitive)")] = None,
    kind: CommunicationKind | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
):
    """The contract's communication log, newest first."""
    return d.list_communications(request.app.state.sessions, contract_id, q=q, kind=kind, limit=limit, offset=offset)


@router.get("/communications", response_model=s.CommunicationPage, responses={403: _problem, 422: _problem})
def search_communications(
    request: Request,
    q: Annotated[str, Query(min_length=2, max_length=200, pattern=r"\S[\s\S]*\S",
                            description="Text to find in subject, body or counterpart (case-insensitive)")],
    kind: CommunicationKind | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
):
    """Search the communication logs of every contract the caller may see, newest first."""
    return d.search_communications(request.app.state.sessions, principal_of(request), q=q, kind=kind, limit=limit,
                                   offset=offset)
