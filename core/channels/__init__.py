"""Notification channels: small, pure, synchronous senders called from a Temporal activity.

* :mod:`core.channels.render` — ``render_notification(kind, locale, context)`` -> subject, text, html
* :mod:`core.channels.email` — ``send_email(settings, to=..., cc=..., ...)`` over SMTP
* :mod:`core.channels.webhook` — ``post_webhook(settings, url, secret, payload, event_id=...)``,
  with ``sign`` / ``verify`` for the HMAC-SHA256 signature receivers check

Every delivery failure is one of two exceptions, so the activity can map them onto Temporal's
retry policy: :class:`PermanentDeliveryError` (retrying cannot help: a 5xx SMTP reply, an invalid
address, a 4xx webhook answer -> non-retryable) and :class:`TransientDeliveryError` (4xx SMTP
replies, timeouts, refused connections, webhook 5xx/429 -> retry with back-off).  The submodules
are imported on demand, so importing this package costs nothing.
"""

from __future__ import annotations


class DeliveryError(Exception):
    """A notification could not be delivered."""

    def __init__(self, message: str, *, code: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        #: SMTP reply code or HTTP status, when the far end answered.
        self.code = code
        #: Seconds the far end asked us to wait (HTTP ``Retry-After``), if any.
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Retrying the same delivery cannot succeed (rejected recipient, bad address, 4xx webhook)."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        delivered: list[str] | None = None,
        refused: dict[str, tuple[int, str]] | None = None,
    ):
        super().__init__(message, code=code)
        #: For an email refused for only some recipients: who did get it, and who was refused.
        self.delivered = list(delivered or [])
        self.refused = dict(refused or {})


class TransientDeliveryError(DeliveryError):
    """The delivery may succeed later (4xx SMTP reply, timeout, connection refused, HTTP 5xx/429)."""


__all__ = ["DeliveryError", "PermanentDeliveryError", "TransientDeliveryError"]
