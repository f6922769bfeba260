"""Logging in (OAuth2 password flow), who am I, passwords, and API keys for machines."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import select

from api.auth import schemas as s
from api.auth import service as auth
from api.auth.policy import principal_of
from api.platform.problems import PROBLEM_RESPONSE, Problem, Responses
from core import security
from models import ApiKey, User

router = APIRouter(tags=["auth"])
_problem = PROBLEM_RESPONSE
ERRORS: Responses = {401: _problem, 403: _problem, 404: _problem, 422: _problem}
THROTTLED: Responses = {429: {**_problem, "description": "Too many failed log-ins for this user name or from this address; "
                                              "wait Retry-After seconds",
                   "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}}}


@router.post("/auth/token", response_model=s.TokenOut, responses={**ERRORS, **THROTTLED})
async def issue_token(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]):
    """Log in with a user id and password (form fields ``username``, ``password``) for a bearer token."""

    def work():
        with request.app.state.sessions() as session:
            return auth.login(session, request.app.state.settings, request.app.state, form.username, form.password,
                              request.client.host if request.client else None)

    token, expires = await run_in_threadpool(work)
    return s.TokenOut(access_token=token, expires_at=expires)


@router.get("/auth/me", response_model=s.MeOut, responses=ERRORS)
def whoami(request: Request):
    p = principal_of(request)
    return s.MeOut(id=p.id, name=p.name, kind=p.kind, roles=sorted(p.roles), department=p.department,
                   team=sorted(p.team))


@router.post("/auth/password", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
def change_password(request: Request, body: s.PasswordIn):
    """Change your own password (with the current one), or, as an admin, anyone's."""
    p = principal_of(request)
    target = body.user_id or p.id
    with request.app.state.sessions() as session:
        user = session.get(User, target)
        if target != p.id and not p.is_admin:
            raise Problem(403, "only admins set other people's passwords", slug="forbidden")
        if user is None:
            raise Problem(404, f"no user with id {target!r}", slug="user-not-found")
        if target == p.id and not p.is_admin and (
                not body.current_password or not security.verify_password(user.password_hash, body.current_password)):
            raise Problem(403, "the current password is wrong", slug="forbidden")
        user.password_hash = security.hash_password(body.new_password)
        session.commit()


def _key_out(row: ApiKey) -> dict:
    return {"id": row.id, "name": row.name, "roles": row.roles.split(), "created_by": row.created_by,
            "created_at": row.created_at, "revoked_at": row.revoked_at}


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=s.KeyCreated, responses=ERRORS)
def create_key(request: Request, body: s.KeyCreate):
    """A new API key for a service account (ERP, finance feed, CRM).  The key is shown once."""
    p = principal_of(request)
    with request.app.state.sessions() as session:
        row, token = auth.create_api_key(session, name=body.name, roles=list(body.roles), created_by=p.id)
        session.commit()
        return {**_key_out(row), "key": token}


@router.get("/api-keys", response_model=list[s.KeyOut], responses=ERRORS)
def list_keys(request: Request):
    with request.app.state.sessions() as session:
        return [_key_out(r) for r in session.execute(select(ApiKey).order_by(ApiKey.created_at)).scalars()]


@router.post("/api-keys/{key_id}/revoke", response_model=s.KeyOut, responses=ERRORS)
def revoke_key(request: Request, key_id: Annotated[str, Path(min_length=1, max_length=40)]):
    """Revoke a key at once (kept, so the audit trail can still say whose it was).  Idempotent."""
    with request.app.state.sessions() as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            raise Problem(404, f"no API key with id {key_id!r}", slug="key-not-found")
        if row.revoked_at is None:
            row.revoked_at = datetime.now(timezone.utc)
            session.commit()
        return _key_out(row)
