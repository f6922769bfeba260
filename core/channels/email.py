"""Send one notification email over SMTP (stdlib ``smtplib``), classifying every failure.

``send_email`` is synchronous and thread-safe: STARTTLS and login when configured, the timeout
from settings.  Connections are kept open and reused across messages (``SMTP_POOL_SIZE`` idle per
server, 0 for one connection per message); a pooled connection that fails before the message is
handed over is dropped and the message sent on a new one (``_transmit``), so a connection the
server closed while idle neither loses a message nor sends it twice.  The ``Message-ID`` is derived from the
caller's ``message_id`` (``<{message_id}@contracts>``), so a retried activity produces the same
message and receivers (and their mail clients) can drop the duplicate.

Failures raise :class:`~core.channels.PermanentDeliveryError` (5xx replies, every recipient
refused with 5xx, an invalid address or header) or :class:`~core.channels.TransientDeliveryError`
(4xx replies, timeouts, refused or dropped connections).
"""

from __future__ import annotations

import functools
import os
import re
import smtplib
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy as email_policy
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses
from typing import Any

from core.channels import PermanentDeliveryError, TransientDeliveryError
from core.settings import Settings

MESSAGE_ID_DOMAIN = "contracts"
# RFC 5322 dot-atom text: what may appear left of the "@" in a Message-ID without quoting.
# 7-bit transfer encodings only (base64 / quoted-printable bodies, RFC 2047 headers): we never
# depend on the server's 8BITMIME or SMTPUTF8.
class _HeaderFactory(HeaderRegistry):
    """The email package's header registry, building each header class once.  The stock registry
    makes a new class (``type(...)``) for every header of every message (~30 per message, a third
    of the time it takes to build one); the classes it makes are all alike, so they are kept."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls

    def map_to_type(self, name: str, cls: type) -> None:
        super().map_to_type(name, cls)
        self._classes.pop(name.lower(), None)


_POLICY = email_policy.SMTP.clone(cte_type="7bit", header_factory=_HeaderFactory())
_ATEXT = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]")


def format_message_id(message_id: str) -> str:
    """``abc-1`` -> ``<abc-1@contracts>``; characters a Message-ID cannot hold become ``=XX``."""
    if not message_id:
        raise PermanentDeliveryError("message_id is required (it is how receivers drop duplicates)")
    local = _ATEXT.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()), message_id)
    local = re.sub(r"\.{2,}", lambda m: "=2E" * len(m.group()), local).strip(".") or "=2E"
    return f"<{local}@{MESSAGE_ID_DOMAIN}>"


def _address(value: str) -> Address:
    """One ``user@example.com`` or ``Name <user@example.com>``; PermanentDeliveryError if invalid."""
    if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
        raise PermanentDeliveryError(f"invalid email address {value!r}")
    return _parsed_address(value)


@functools.lru_cache(maxsize=4096)  # the same people get mail again and again; an error is not kept
def _parsed_address(value: str) -> Address:
    pairs = getaddresses([value])
    if len(pairs) != 1:
        raise PermanentDeliveryError(f"invalid email address {value!r}")
    name, spec = pairs[0]
    local, at, domain = spec.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in spec):
        raise PermanentDeliveryError(f"invalid email address {value!r}")
    try:
        return Address(display_name=name, addr_spec=spec)
    except (ValueError, IndexError) as exc:
        raise PermanentDeliveryError(f"invalid email address {value!r}: {exc}") from exc


_ADDRESS_HEADERS: dict[tuple, Any] = {}
_ADDRESS_HEADERS_MAX = 1024


def _address_header(name: str, addresses: list[Address]) -> Any:
    """The ``From``/``To``/``Cc`` header for these addresses, parsed once and kept: a header object
    is immutable, and the same sender and owners recur in every message."""
    key = (name, tuple((a.display_name, a.username, a.domain) for a in addresses))
    header = _ADDRESS_HEADERS.get(key)
    if header is None:
        if len(_ADDRESS_HEADERS) >= _ADDRESS_HEADERS_MAX:
            _ADDRESS_HEADERS.clear()
        header = _ADDRESS_HEADERS[key] = _POLICY.header_factory(name, addresses)
    return header


def _unique(addresses: list[Address], seen: set[str]) -> list[Address]:
    out = []
    for a in addresses:
        key = a.addr_spec.lower()
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


def build_message(
    settings: Settings,
    *,
    to: list[str],
    cc: list[str],
    subject: str,
    text: str,
    html: str,
    message_id: str,
    headers: dict | None = None,
) -> tuple[EmailMessage, str, list[str]]:
    """The message, the envelope sender and the envelope recipients (To then Cc, deduplicated)."""
    if isinstance(to, str) or isinstance(cc, str):
        raise TypeError("to and cc are lists of addresses, not strings")
    seen: set[str] = set()
    to_addrs = _unique([_address(a) for a in to or []], seen)
    cc_addrs = _unique([_address(a) for a in cc or []], seen)
    if not to_addrs:
        raise PermanentDeliveryError("an email needs at least one To recipient")
    sender = _address(settings.smtp_from)

    msg = EmailMessage(policy=_POLICY)
    try:
        msg["From"] = _address_header("From", [sender])
        msg["To"] = _address_header("To", to_addrs)
        if cc_addrs:
            msg["Cc"] = _address_header("Cc", cc_addrs)
        msg["Subject"] = " ".join(subject.split())
        msg["Date"] = format_datetime(datetime.now(timezone.utc))
        msg["Message-ID"] = format_message_id(message_id)
        # RFC 3834: automated mail; keeps vacation responders from answering it.
        msg["Auto-Submitted"] = "auto-generated"
        for name, value in (headers or {}).items():
            del msg[name]
            msg[name] = str(value)
        msg.set_content(text, subtype="plain", charset="utf-8")
        msg.add_alternative(html, subtype="html", charset="utf-8")
    except (ValueError, TypeError) as exc:  # e.g. a header value with a line break
        raise PermanentDeliveryError(f"cannot build the message: {exc}") from exc
    recipients = [a.addr_spec for a in to_addrs + cc_addrs]
    return msg, sender.addr_spec, recipients


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


class _Client(smtplib.SMTP):
    """``smtplib.SMTP`` that notes when it begins handing a message over (the DATA command): until
    then the server holds nothing of it, so a failure leaves nothing that a resend could duplicate."""

    data_begun = False

    def data(self, msg):
        self.data_begun = True
        return super().data(msg)


@dataclass(eq=False)
class _Pooled:
    smtp: _Client
    opened: float
    used: float


# A pooled connection idle longer than this is asked NOOP before it carries a message; one older
# than this is closed rather than reused (DNS and load balancers change; servers cap sessions).
_PROBE_AFTER_SECONDS = 2.0
_MAX_AGE_SECONDS = 300.0


class _Pool:
    """Idle connections to one SMTP server (host, port, TLS, login), most recently used first.
    A connection is held by one thread at a time: taken out to send, given back after."""

    def __init__(self, size: int, idle_seconds: float) -> None:
        self.size = size
        self.idle_seconds = idle_seconds
        self._idle: deque[_Pooled] = deque()
        self._lock = threading.Lock()

    def take(self) -> _Pooled | None:
        now = time.monotonic()
        stale: list[_Pooled] = []
        found = None
        with self._lock:
            while self._idle and self._expired(self._idle[0], now):  # the oldest first
                stale.append(self._idle.popleft())
            if self._idle:
                found = self._idle.pop()
        for p in stale:
            p.smtp.close()
        return found

    def give(self, pooled: _Pooled) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(pooled)
                return
        _quit(pooled.smtp)

    def close_idle(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for p in idle:
            _quit(p.smtp)

    def _expired(self, p: _Pooled, now: float) -> bool:
        return now - p.used > self.idle_seconds or now - p.opened > _MAX_AGE_SECONDS


_POOLS: dict[tuple, _Pool] = {}
_POOLS_LOCK = threading.Lock()
_POOLS_PID = os.getpid()


def _pool(settings: Settings) -> _Pool | None:
    global _POOLS_PID
    if settings.smtp_pool_size <= 0:
        return None
    key = (settings.smtp_host, settings.smtp_port, settings.smtp_starttls, settings.smtp_username,
           settings.smtp_password, settings.smtp_timeout_seconds)
    with _POOLS_LOCK:
        if os.getpid() != _POOLS_PID:  # a forked child: its parent's sockets are not its own
            _POOLS.clear()
            _POOLS_PID = os.getpid()
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = _Pool(settings.smtp_pool_size, settings.smtp_pool_idle_seconds)
        return pool


def close_idle_connections() -> None:
    """QUIT every idle pooled connection (a worker shutting down; tests)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
    for pool in pools:
        pool.close_idle()


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _open(settings: Settings) -> _Client:
    """A new connection: greeting, EHLO, STARTTLS and login as configured."""
    smtp = _Client(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_seconds)
    try:
        smtp.ehlo()
        if settings.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if settings.smtp_username:
            smtp.login(settings.smtp_username, settings.smtp_password or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


def _send_on(smtp: _Client, msg: EmailMessage, envelope_from: str, recipients: list[str]) -> dict:
    smtp.data_begun = False
    try:
        return smtp.send_message(msg, from_addr=envelope_from, to_addrs=recipients)
    except BaseException:
        smtp.close()
        raise


def _alive(smtp: smtplib.SMTP) -> bool:
    try:
        return smtp.noop()[0] == 250
    except (smtplib.SMTPException, OSError):
        return False


def _transmit(settings: Settings, msg: EmailMessage, envelope_from: str, recipients: list[str]) -> dict:
    """Send one message; returns the recipients refused while others were accepted.

    On a pooled connection first, if one is idle.  Whatever goes wrong there before the message
    is handed over (the server dropped the connection while it was idle, or answers MAIL or RCPT
    oddly) only closes that connection: the message goes once more, on a new one, whose outcome
    is the one reported and classified.  Once DATA has begun, a failure is reported as it is: the
    server may hold the message, and sending it again could deliver it twice."""
    pool = _pool(settings)
    if pool is not None and (pooled := pool.take()) is not None:
        if time.monotonic() - pooled.used > _PROBE_AFTER_SECONDS and not _alive(pooled.smtp):
            pooled.smtp.close()
        else:
            try:
                refused = _send_on(pooled.smtp, msg, envelope_from, recipients)
            except (smtplib.SMTPException, OSError):
                if pooled.smtp.data_begun:
                    raise
            else:
                pooled.used = time.monotonic()
                pool.give(pooled)
                return refused
    smtp = _open(settings)
    opened = time.monotonic()
    refused = _send_on(smtp, msg, envelope_from, recipients)
    # The message is accepted: from here nothing may turn this into a retry (a duplicate).
    if pool is not None:
        pool.give(_Pooled(smtp, opened, time.monotonic()))
    else:
        _quit(smtp)
    return refused


def _classify_reply(what: str, code: int, reply: bytes | str) -> Exception:
    message = f"SMTP server refused {what}: {code} {_text(reply)}".strip()
    if 500 <= code <= 599:
        return PermanentDeliveryError(message, code=code)
    return TransientDeliveryError(message, code=code)


def send_email(
    settings: Settings,
    *,
    to: list[str],
    cc: list[str],
    subject: str,
    text: str,
    html: str,
    message_id: str,
    headers: dict | None = None,
) -> None:
    """Send a multipart/alternative (text + HTML, UTF-8) message; raise a classified error."""
    msg, envelope_from, recipients = build_message(
        settings, to=to, cc=cc, subject=subject, text=text, html=html, message_id=message_id, headers=headers
    )
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        refused = _transmit(settings, msg, envelope_from, recipients)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _reply in exc.recipients.values()]
        detail = "; ".join(f"{a}: {c} {_text(r)}" for a, (c, r) in exc.recipients.items())
        if codes and all(500 <= c <= 599 for c in codes):
            raise PermanentDeliveryError(
                f"every recipient was refused: {detail}",
                code=max(codes),
                refused={a: (c, _text(r)) for a, (c, r) in exc.recipients.items()},
            ) from exc
        raise TransientDeliveryError(f"recipients refused for now: {detail}", code=min(codes, default=None)) from exc
    except smtplib.SMTPSenderRefused as exc:
        raise _classify_reply(f"the sender {exc.sender}", exc.smtp_code, exc.smtp_error) from exc
    except smtplib.SMTPNotSupportedError as exc:  # STARTTLS configured but not offered, SMTPUTF8 needed
        raise PermanentDeliveryError(f"SMTP server {where} does not support what we need: {exc}") from exc
    except smtplib.SMTPResponseException as exc:  # DATA, HELO, AUTH, connect replies (421 ...)
        raise _classify_reply("the message", exc.smtp_code, exc.smtp_error) from exc
    except smtplib.SMTPServerDisconnected as exc:
        raise TransientDeliveryError(f"SMTP server {where} closed the connection: {exc}") from exc
    except smtplib.SMTPException as exc:
        raise TransientDeliveryError(f"SMTP error talking to {where}: {exc}") from exc
    except ssl.SSLCertVerificationError as exc:
        raise PermanentDeliveryError(f"SMTP server {where} certificate not trusted: {exc}") from exc
    except OSError as exc:  # timeouts, refused/reset connections, DNS, other TLS errors
        raise TransientDeliveryError(f"cannot reach SMTP server {where}: {exc!r}") from exc

    if refused:
        # Accepted for some recipients, refused for others.  Retrying would resend to those who
        # have it (Message-ID lets them drop it), so only temporary refusals are worth a retry.
        detail = "; ".join(f"{a}: {c} {_text(r)}" for a, (c, r) in refused.items())
        if all(500 <= c <= 599 for c, _ in refused.values()):
            raise PermanentDeliveryError(
                f"delivered to some recipients, refused for others: {detail}",
                code=max(c for c, _ in refused.values()),
                delivered=[r for r in recipients if r not in refused],
                refused={a: (c, _text(r)) for a, (c, r) in refused.items()},
            )
        raise TransientDeliveryError(f"some recipients were refused for now: {detail}")


__all__ = ["send_email", "build_message", "format_message_id", "close_idle_connections"]
