"""Credentials: password hashes (argon2id), signed access tokens (JWT, HS256) and API keys.

* Passwords are hashed with argon2id (argon2-cffi's defaults, OWASP's first choice); a hash made
  with older parameters is re-hashed at the next successful login (``needs_rehash``).
* People log in with the OAuth2 password flow and get a short-lived JWT (``sub`` = user id).
  The token says who, never what they may do: roles are read from the organisation on every
  request, so a transfer or a deactivation takes effect at once.
* Machines (ERP, finance feed, CRM) use API keys ``ck_<key id>_<secret>``.  Only a SHA-256 of the
  key is stored: it is 256 random bits, so a slow hash adds nothing but latency to every call.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
JWT_ALGORITHM = "HS256"
KEY_PREFIX = "ck_"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        # Same work as a real check, so timing does not tell whether the user exists.
        _hasher.hash(password)
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def issue_token(user_id: str, secret: str, ttl: timedelta, now: datetime | None = None) -> tuple[str, datetime]:
    now = now or datetime.now(timezone.utc)
    expires = now + ttl
    claims = {"sub": user_id, "iat": int(now.timestamp()), "exp": int(expires.timestamp()), "typ": "access",
              "jti": secrets.token_urlsafe(16)}  # its id: logging out revokes this token alone
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM), expires


@dataclass(frozen=True)
class AccessToken:
    user_id: str
    token_id: str | None  # None: issued before tokens carried an id (they expire as before)
    expires_at: datetime


def read_access_token(token: str, secret: str) -> AccessToken | None:
    """What a valid, unexpired access token says, or None."""
    try:
        claims = jwt.decode(token, secret, algorithms=[JWT_ALGORITHM], options={"require": ["sub", "exp"]})
    except jwt.PyJWTError:
        return None
    if claims.get("typ") != "access" or not isinstance(claims.get("sub"), str):
        return None
    jti = claims.get("jti")
    return AccessToken(claims["sub"], jti if isinstance(jti, str) and 0 < len(jti) <= 64 else None,
                       datetime.fromtimestamp(int(claims["exp"]), timezone.utc))


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret: str  # shown once, at creation

    @property
    def token(self) -> str:
        return f"{KEY_PREFIX}{self.key_id}_{self.secret}"


def new_api_key() -> NewKey:
    return NewKey(key_id=secrets.token_hex(6), secret=secrets.token_urlsafe(32))


def split_api_key(token: str) -> tuple[str, str] | None:
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(KEY_PREFIX):].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
