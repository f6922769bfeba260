"""Authentication: turn a request's credentials into a ``Principal`` (api/auth/principal.py).

Accepted, in this order:
  * ``Authorization: Bearer <token>``: an access token from ``POST /auth/token`` (JWT) or an API
    key ``ck_<id>_<secret>`` (or the bootstrap ``ADMIN_API_KEY``);
  * ``X-API-Key: <key>``;
  * HTTP Basic with an API key as the password (any user name): lets a base URL carry a key,
    ``http://apikey:ck_...@host/``;
  * the dashboard's session cookie (a JWT), for safe methods and the pages only: a cookie is sent
    by the browser on its own, so it never authorises an API write (no CSRF).
Credentials that are present but wrong are a 401, never a fall-back to "nobody".
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import datetime, timedelta, timezone
from types import EllipsisType

from fastapi import Request
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from api.auth.login_throttle import LoginLimiter
from api.auth.principal import ALL_ROLES, Principal, principal_for_user
from api.platform.problems import Problem
from core import security
from core.settings import Settings
from models import ApiKey, RevokedToken, User

SESSION_COOKIE = "ct_session"
BOOTSTRAP_KEY_ID = "bootstrap"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def jwt_secret(settings: Settings, app_state) -> str:
    """The signing secret: JWT_SECRET, or (dev only, refused in production by Settings) one made up
    for this process, so dev tokens die with the process."""
    if settings.jwt_secret:
        return settings.jwt_secret
    secret = getattr(app_state, "dev_jwt_secret", None)
    if secret is None:
        secret = app_state.dev_jwt_secret = secrets.token_urlsafe(32)
    return secret


class Unauthenticated(Problem):
    def __init__(self, detail: str) -> None:
        super().__init__(401, detail, slug="unauthenticated")


def credentials(request: Request) -> tuple[str, str] | None:
    """(kind, value) of the credential the request carries: ("token", ...), ("key", ...), or None."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            return ("key", value) if _looks_like_key(value, request) else ("token", value)
        if scheme.lower() == "basic" and value:
            try:
                _user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthenticated("malformed HTTP Basic credentials") from None
            return ("key", password)
        raise Unauthenticated("unsupported Authorization scheme: use Bearer, or Basic with an API key")
    key = request.headers.get("x-api-key")
    if key:
        return ("key", key.strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and (request.method in SAFE_METHODS or request.url.path.startswith("/ui")):
        return ("cookie", cookie)
    return None


def _looks_like_key(value: str, request: Request) -> bool:
    if value.startswith(security.KEY_PREFIX):
        return True
    bootstrap = request.app.state.settings.admin_api_key
    return bool(bootstrap) and security.same_secret(value, bootstrap)


def authenticate_at_once(request: Request) -> Principal | None | EllipsisType:
    """The caller when telling it needs no database: None if the request carries no credentials,
    the bootstrap admin key's principal; ``...`` when the credentials must be looked up
    (``authenticate``, in a thread).  Saves that thread hop where there is nothing to look up."""
    found = credentials(request)
    if found is None:
        return None
    kind, value = found
    settings: Settings = request.app.state.settings
    if kind == "key" and settings.admin_api_key and security.same_secret(value, settings.admin_api_key):
        return Principal(id=f"key:{BOOTSTRAP_KEY_ID}", name="bootstrap admin key", kind="service",
                         roles=frozenset({"admin"}))
    return ...


def authenticate(request: Request, session: Session) -> Principal | None:
    """The caller, None if the request carries no credentials; 401 if they are wrong."""
    at_once = authenticate_at_once(request)
    if at_once is not ...:
        return at_once
    found = credentials(request)
    assert found is not None  # no credentials: authenticate_at_once answered None
    kind, value = found
    settings: Settings = request.app.state.settings
    if kind == "key":
        return _principal_for_key(session, settings, value)
    token = security.read_access_token(value, jwt_secret(settings, request.app.state))
    if token is not None and token.token_id is not None and session.get(RevokedToken, token.token_id) is not None:
        token = None  # logged out
    if token is None:
        if kind == "cookie":
            return None  # an expired dashboard session: the page asks to log in again
        raise Unauthenticated("the access token is invalid, has expired or was logged out: log in again at "
                              "POST /auth/token")
    user = session.get(User, token.user_id)
    if user is None or not user.active:
        raise Unauthenticated("the token's user no longer exists or is inactive")
    return principal_for_user(session, user)


def _principal_for_key(session: Session, settings: Settings, token: str) -> Principal:
    parts = security.split_api_key(token)
    row = session.get(ApiKey, parts[0]) if parts else None
    if parts is None or row is None or row.revoked_at is not None or not security.same_secret(
        security.key_digest(parts[1]), row.secret_sha256
    ):
        raise Unauthenticated("unknown or revoked API key")
    roles = frozenset(r for r in row.roles.split() if r in ALL_ROLES)
    return Principal(id=f"key:{row.id}", name=row.name, kind="service", roles=roles)


def login(session: Session, settings: Settings, app_state, username: str, password: str,
          client_address: str | None = None) -> tuple[str, datetime]:
    """Check a person's password and issue an access token (401 on any mismatch, same answer
    whether the user exists or not; 429 while failed log-ins for the name or from the address are
    throttled, api/auth/login_throttle.py)."""
    throttle = LoginLimiter(settings)
    # Counted under the name as typed, letter case folded: "LI.WEI" logs in as li.wei, so its
    # failures must count against li.wei too (case variants are not fresh guesses).
    name = username.lower()
    throttle.check(session, name, client_address)
    user = _user_logging_in(session, username)
    ok = security.verify_password(user.password_hash if user else None, password)
    if not ok or user is None or not user.active or user.password_hash is None:
        throttle.failed(session, name, client_address)
        session.commit()
        raise Unauthenticated("wrong user name or password")
    throttle.succeeded(session, name)
    if security.needs_rehash(user.password_hash):
        user.password_hash = security.hash_password(password)
    session.commit()
    return security.issue_token(user.id, jwt_secret(settings, app_state),
                                timedelta(minutes=settings.access_token_minutes))


def _user_logging_in(session: Session, username: str) -> User | None:
    """The user with this id, letter case aside: ids differing only in case are refused
    (core.org.create_user), so at most one matches; where older data holds two, only the exact
    id logs in."""
    user = session.get(User, username)
    if user is not None:
        return user
    same = session.scalars(select(User).where(func.lower(User.id) == username.lower()).limit(2)).all()
    return same[0] if len(same) == 1 else None


def log_out(session: Session, settings: Settings, app_state, token: str) -> bool:
    """End this access token now (not the person's other sessions); False if it was not a valid
    token.  Revocations past their token's expiry are dropped on the way: nothing accumulates."""
    found = security.read_access_token(token, jwt_secret(settings, app_state))
    if found is None or found.token_id is None:
        return False
    now = datetime.now(timezone.utc)
    session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
    if session.get(RevokedToken, found.token_id) is None:
        session.add(RevokedToken(jti=found.token_id, user_id=found.user_id, expires_at=found.expires_at))
    session.commit()
    return True


def create_api_key(session: Session, *, name: str, roles: list[str], created_by: str) -> tuple[ApiKey, str]:
    new = security.new_api_key()
    row = ApiKey(id=new.key_id, name=name, roles=" ".join(sorted(set(roles))),
                 secret_sha256=security.key_digest(new.secret), created_by=created_by,
                 created_at=datetime.now(timezone.utc))
    session.add(row)
    return row, new.token
