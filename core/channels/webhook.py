"""Signed webhooks: POST a JSON event to a receiver's URL, HMAC-SHA256 signed.

Each request carries

* ``X-Contracts-Event-Id`` — stable per event, the same on every retry: receivers deduplicate on it;
* ``X-Contracts-Timestamp`` — unix seconds when this attempt was signed;
* ``X-Contracts-Signature`` — ``sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``.

A receiver recomputes the signature over the raw body with :func:`verify`, which compares in
constant time and refuses timestamps more than five minutes away (replayed requests).

**Targets.** A receiver must be a public address: a URL whose host is (or resolves to) a
loopback, link-local, private (RFC 1918, fc00::/7), shared, unspecified, multicast or reserved
address is refused, unless ``WEBHOOK_ALLOW_PRIVATE_TARGETS`` (for development and the tests,
whose receivers listen on 127.0.0.1).  The API checks at registration (:func:`check_target`), and
:func:`post_webhook` again at every delivery, since DNS may have changed: it resolves the host,
refuses (permanently) if any address is not allowed, and connects to the address it checked (the
Host header and TLS name stay the URL's), so a second lookup cannot swap in another address.

2xx is success; 5xx, 408, 429, timeouts and connection errors raise
:class:`~core.channels.TransientDeliveryError` (with ``retry_after`` when the receiver sent
``Retry-After``); any other answer (4xx, and 3xx: redirects are not followed) raises
:class:`~core.channels.PermanentDeliveryError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import socket
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


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(ValueError):
    """A webhook URL whose host is not a public address (see the module docstring)."""


def address_refusal(address: IPAddress) -> str | None:
    """Why a receiver at ``address`` is refused, or None for a public address."""
    inner = address
    if isinstance(inner, ipaddress.IPv6Address):  # an IPv4 address written as IPv6 is judged as itself
        inner = inner.ipv4_mapped or inner.sixtofour or inner
    for refused, kind in ((inner.is_loopback, "a loopback"), (inner.is_link_local, "a link-local"),
                          (inner.is_multicast, "a multicast"), (inner.is_unspecified, "an unspecified"),
                          (inner.is_private, "a private"), (inner.is_reserved, "a reserved"),
                          (not inner.is_global, "a non-public")):
        if refused:
            return f"{address} is {kind} address"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal: itself), in the resolver's order."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    found: list[IPAddress] = []
    for *_ignored, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


def check_target(url: str, *, allow_private: bool, resolve_host: bool = True) -> list[IPAddress]:
    """The addresses a webhook to ``url`` may connect to; :class:`TargetRefused` if the host is not
    public (unless ``allow_private``).  ``localhost`` is refused without a lookup; a name that
    does not resolve (now) gives ``[]`` (``socket.gaierror`` is left to the caller when
    ``resolve_host``: at delivery a failed lookup is worth a retry)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not allow_private and (host == "localhost" or host.endswith(".localhost")):
        raise TargetRefused(f"{host} is a loopback name; webhooks go to public addresses")
    if _literal(host) is None and not resolve_host:
        return []
    addresses = resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = address_refusal(address)
            if reason:
                shown = "" if _literal(host) is not None else f"{host} resolves to "
                raise TargetRefused(f"{shown}{reason}; webhooks go to public addresses")
    return addresses


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
        addresses = check_target(url, allow_private=settings.webhook_allow_private_targets)
    except TargetRefused as exc:
        raise PermanentDeliveryError(f"webhook {where} refused: {exc}") from exc
    except (socket.gaierror, UnicodeError) as exc:
        raise TransientDeliveryError(f"webhook {where} unreachable: the host does not resolve ({exc})") from exc
    except ValueError as exc:  # a bad port
        raise PermanentDeliveryError(f"webhook URL {url!r} is not usable: {exc}") from exc
    if not addresses:
        raise TransientDeliveryError(f"webhook {where} unreachable: the host resolves to no address")
    try:
        own = client is None
        http = client or httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
        with contextlib.closing(http) if own else contextlib.nullcontext(http):
            status, snippet, retry_after = _send_pinned(http, settings, url, addresses, body, headers)
            if 200 <= status <= 299:
                return status
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


def _send_pinned(http: httpx.Client, settings: Settings, url: str, addresses: list[IPAddress], body: bytes,
                 headers: dict[str, str]) -> tuple[int, bytes, float | None]:
    """POST to the checked addresses (the next one if one refuses the connection), naming the URL's
    host in the Host header and, for https, in the TLS handshake (SNI and certificate check)."""
    target = httpx.URL(url)
    named = _literal(target.host) is None
    extensions = {"sni_hostname": target.host} if named and target.scheme == "https" else {}
    for n, address in enumerate(addresses):
        pinned = target.copy_with(host=str(address)) if named else target
        request = http.build_request("POST", pinned, content=body, timeout=settings.webhook_timeout_seconds,
                                     headers={**headers, "Host": target.netloc.decode("ascii")} if named else headers,
                                     extensions=extensions)
        try:
            response = http.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError:
            if n == len(addresses) - 1:
                raise
            continue
        with contextlib.closing(response):
            status = response.status_code
            snippet = b""
            if not 200 <= status <= 299:
                for chunk in response.iter_bytes():
                    snippet += chunk
                    if len(snippet) >= _SNIPPET_BYTES:
                        break
            return status, snippet, _retry_after(response.headers.get("Retry-After"))
    raise AssertionError("unreachable: addresses is not empty")


__all__ = ["sign", "verify", "post_webhook", "check_target", "TargetRefused", "address_refusal", "encode_payload",
           "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "EVENT_ID_HEADER"]
