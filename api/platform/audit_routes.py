"""Reading the audit trail (api/platform/audit.py writes it; nothing changes or removes an entry).

Who reads what: admins read every entry (``contract=`` optional); anyone else reads one contract's
entries and must be its owner or a manager above them (the policy's ``audit_reader`` rule).  A
contract the caller cannot see, or that does not exist, is a 404 worded as everywhere else; a
visible contract they do not own (finance and legal see every contract) is a 403.  Without
``contract=`` a non-admin gets 403: the whole trail is not theirs to read (not a 422: the request
is well formed, the caller is not allowed).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.auth.policy import audit_reader, can_see, contract_access, forbidden, not_found, principal_of
from api.platform.fields import MAX_INT
from api.platform.problems import PROBLEM_RESPONSE, Responses
from models import AuditEntry

router = APIRouter(tags=["audit"])
_problem = PROBLEM_RESPONSE
ERRORS: Responses = {403: _problem, 404: _problem, 422: _problem}


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    request_id: str = Field(description="The request's X-Request-ID (sent by the caller or made up by the server)")
    actor: str = Field(description="Who made the request: a user id, or key:<id> for an API key")
    actor_kind: str = Field(description="user or service")
    roles: list[str] = Field(description="The actor's roles at the time")
    on_behalf_of: str | None = Field(description="The person an admin or a machine acted for")
    action: str = Field(description="The operation (route name), e.g. record_payment")
    method: str
    path: str
    target_type: str = Field(description="contract, user, department, webhook, api_key, task, ...")
    target_id: str | None
    contract_id: str | None
    status: int | None = Field(description="The HTTP status answered; null when written with the database change")
    digest_of: str = Field(description="rows: the changed rows before and after; "
                                       "request: the request and answer bodies")
    before_digest: str | None = Field(description="SHA-256 hex")
    after_digest: str | None = Field(description="SHA-256 hex")


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_after_id: int | None = Field(description="Pass as after_id for the next page; null on the last page")


def _out(e: AuditEntry) -> AuditEntryOut:
    return AuditEntryOut(
        id=e.id, at=e.at, request_id=e.request_id, actor=e.actor, actor_kind=e.actor_kind, roles=e.roles.split(),
        on_behalf_of=e.on_behalf_of, action=e.action, method=e.method, path=e.path, target_type=e.target_type,
        target_id=e.target_id, contract_id=e.contract_id, status=e.status, digest_of=e.digest_of,
        before_digest=e.before_digest, after_digest=e.after_digest,
    )


@router.get("/audit", response_model=AuditPage, responses=ERRORS)
def list_audit(
    request: Request,
    contract: Annotated[str | None, Query(min_length=1, max_length=40, description="Contract id")] = None,
    actor: Annotated[str | None, Query(min_length=1, max_length=100, description="User id or key:<id>")] = None,
    action: Annotated[str | None, Query(min_length=1, max_length=60, description="Route name")] = None,
    request_id: Annotated[str | None, Query(min_length=1, max_length=64, description="X-Request-ID")] = None,
    after_id: Annotated[int, Query(ge=0, le=MAX_INT, description="Entries after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
):
    """The audit trail, oldest first: one entry per state-changing request.  Admins read all of
    it; a contract's owner and the managers above them read that contract's (``contract=``)."""
    p = principal_of(request)
    with request.app.state.sessions() as session:
        if contract is not None:
            access = contract_access(session, contract)
            if access is None or not can_see(p, access):
                raise not_found(contract)
            reason = audit_reader(p, request, access)
            if reason:
                raise forbidden(reason)
        elif not p.is_admin:
            raise forbidden("the audit trail is for admins; a contract's owners read its entries with "
                            "?contract=<id>")
        query = select(AuditEntry).where(AuditEntry.id > after_id)
        if contract is not None:
            query = query.where(AuditEntry.contract_id == contract)
        if actor is not None:
            query = query.where(AuditEntry.actor == actor)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if request_id is not None:
            query = query.where(AuditEntry.request_id == request_id)
        rows = session.execute(query.order_by(AuditEntry.id).limit(limit)).scalars().all()
    items = [_out(r) for r in rows]
    return AuditPage(items=items, next_after_id=items[-1].id if len(items) == limit else None)
