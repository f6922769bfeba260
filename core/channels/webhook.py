"""Signed webhooks: POST a JSON event to a receiver's URL, HMAC-SHA256 signed.

Each request carries

* ``X-Contracts-Event-Id`` — stable per event, the same on every retry: receivers deduplicate on it;
* ``X-Contracts-Timestamp`` — unix seconds when this attempt was signed;
* ``X-Contracts-Signature`` — ``sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``.

A receiver recomputes the signature over the raw body with :func:`verify`, which compares in
constant time and refuses timestamps more than five minutes away (replayed requests).

2xx is success; 5xx, 408, 429, timeouts and connection errors raise
:class:`~core.channels.TransientDeliveryError` (with ``retry_after`` when the receiver sent
``Retry-After``); any other answer (4xx, and 3xx: redirects are not followed) raises
:class:`~core.channels.PermanentDeliveryError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
from datetime import date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx

from core.channels import PermanentDeliveryError, TransientDeliveryError
from core.settings import Settings

SIGNATURE_HEADER = "X-Contracts-Signature"
TIMESTAMP_HEADER = "X-Contracts-Timestamp"
EVENT_ID_HEADER = "X-Contracts-Event-Id"
USER_AGENT = "contract-tracking-webhooks/1"
_TRANSIENT_STATUS = {408, 425, 429}
_SNIPPET_BYTES = 512


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``timestamp + "." + body`` under ``secret``."""
    return hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_seconds: float = 300,
) -> bool:
    """True when ``signature`` (``sha256=<hex>`` or bare hex) signs ``body`` at a fresh ``timestamp``."""
    if not isinstance(timestamp, str) or not (timestamp.isascii() and timestamp.isdigit()):
        return False
    if not isinstance(signature, str) or not isinstance(body, (bytes, bytearray)):
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_seconds:
        return False
    given = signature.strip()
    if given[:7].lower() == "sha256=":
        given = given[7:]
    expected = sign(secret, timestamp, bytes(body))
    return hmac.compare_digest(expected.encode("ascii"), given.lower().encode("utf-8", "replace"))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_payload(payload: dict) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is); Decimal/datetime/UUID become strings."""
    try:
        return json.dumps(
            payload, ensure_ascii=False, separators=(",", ":"), default=_json_default, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PermanentDeliveryError(f"webhook payload cannot be encoded as JSON: {exc}") from exc


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def post_webhook(
    settings: Settings,
    url: str,
    secret: str,
    payload: dict,
    *,
    event_id: str,
    content_type: str = "application/json",
    extra_headers: dict[str, str] | None = None,
    client: httpx.Client | None = None,
) -> int:
    """POST ``payload`` signed with ``secret``; return the 2xx status or raise a classified error.

    ``content_type`` is ``application/cloudevents+json`` for subscription events (docs/webhooks.md);
    ``client`` lets a caller sending many requests reuse connections (one per thread).
    """
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentDeliveryError(f"webhook URL must be an absolute http(s) URL, got {url!r}")
    if not secret:
        raise PermanentDeliveryError("webhook secret is empty")
    if not event_id or any(c in str(event_id) for c in "\r\n"):
        raise PermanentDeliveryError(f"invalid event_id {event_id!r}")
    body = encode_payload(payload)
    timestamp = str(int(time.time()))
    headers = {
        **(extra_headers or {}),
        "Content-Type": content_type,
        "User-Agent": USER_AGENT,
        EVENT_ID_HEADER: str(event_id),
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: f"sha256={sign(secret, timestamp, body)}",
    }
    where = f"{parts.scheme}://{parts.netloc}"
    try:
        own = client is None
        http = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False) if own else client
        with contextlib.closing(http) if own else contextlib.nullcontext(http):
            with http.stream(
                "POST", url, content=body, headers=headers,
                timeout=settings.webhook_timeout_seconds, follow_redirects=False,
            ) as response:
                status = response.status_code
                if 200 <= status <= 299:
                    return status
                snippet = b""
                for chunk in response.iter_bytes():
                    snippet += chunk
                    if len(snippet) >= _SNIPPET_BYTES:
                        break
                retry_after = _retry_after(response.headers.get("Retry-After"))
    except httpx.TimeoutException as exc:
        raise TransientDeliveryError(f"webhook {where} timed out: {exc!r}") from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise PermanentDeliveryError(f"webhook URL {url!r} is not usable: {exc}") from exc
    except UnicodeError as exc:  # a host the IDNA codec refuses (a label over 63 characters, an empty label)
        raise PermanentDeliveryError(f"webhook URL {url!r} is not usable: {exc}") from exc
    except httpx.HTTPError as exc:  # connect/read/write errors, protocol errors, proxies
        raise TransientDeliveryError(f"webhook {where} unreachable: {exc!r}") from exc
    except OSError as exc:
        raise TransientDeliveryError(f"webhook {where} unreachable: {exc!r}") from exc

    text = snippet[:_SNIPPET_BYTES].decode("utf-8", "replace").strip()
    message = f"webhook {where} answered {status}" + (f": {text}" if text else "")
    if status >= 500 or status in _TRANSIENT_STATUS:
        raise TransientDeliveryError(message, code=status, retry_after=retry_after)
    raise PermanentDeliveryError(message, code=status)


__all__ = ["sign", "verify", "post_webhook", "encode_payload", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "EVENT_ID_HEADER"]
