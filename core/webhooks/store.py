"""Webhook subscriptions and their delivery log: the repository the API calls.

Plain functions over a ``Session``; the caller owns the transaction.  ``None`` means not found.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.channels import DeliveryError
from core.channels.webhook import post_webhook
from core.settings import Settings
from core.webhooks.events import CONTENT_TYPE, ping_event
from models import ContractEvent, WebhookDelivery, WebhookSubscription


def _now() -> datetime:
    return datetime.now(timezone.utc)


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def create_subscription(
    session: Session,
    *,
    url: str,
    secret: str | None,
    event_types: list[str],
    description: str = "",
    active: bool = True,
    replay_from_start: bool = False,
) -> WebhookSubscription:
    """A new subscription, starting after the newest event in the log (or at its very start)."""
    now = _now()
    start = 0 if replay_from_start else session.execute(select(func.coalesce(func.max(ContractEvent.id), 0))).scalar_one()
    sub = WebhookSubscription(
        id=uuid.uuid4().hex[:16],
        url=url,
        secret=secret or new_secret(),
        event_types=list(event_types),
        description=description,
        active=active,
        created_at=now,
        updated_at=now,
        cursor=start,
        consecutive_failures=0,
    )
    session.add(sub)
    session.flush()
    return sub


def list_subscriptions(session: Session) -> list[WebhookSubscription]:
    return list(session.execute(select(WebhookSubscription).order_by(WebhookSubscription.created_at)).scalars())


def get_subscription(session: Session, sid: str) -> WebhookSubscription | None:
    return session.get(WebhookSubscription, sid)


def update_subscription(session: Session, sid: str, **fields: Any) -> WebhookSubscription | None:
    sub = session.get(WebhookSubscription, sid, with_for_update=True)
    if sub is None:
        return None
    for name in ("url", "secret", "event_types", "description", "active"):
        if name in fields:
            setattr(sub, name, fields[name])
    if any(name in fields for name in ("url", "secret")) or fields.get("active") is True:
        sub.next_attempt_at = None  # a waiting retry goes out now, to the new endpoint / key
    sub.updated_at = _now()
    return sub


def delete_subscription(session: Session, sid: str) -> bool:
    if session.get(WebhookSubscription, sid) is None:
        return False
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.subscription_id == sid))
    session.execute(delete(WebhookSubscription).where(WebhookSubscription.id == sid))
    return True


def list_deliveries(
    session: Session, sid: str, *, status: str | None, contract_id: str | None, limit: int, offset: int
) -> tuple[list[WebhookDelivery], int]:
    """The delivery log, newest first."""
    D = WebhookDelivery
    query = select(D).where(D.subscription_id == sid)
    if status:
        query = query.where(D.status == status)
    if contract_id:
        query = query.where(D.contract_id == contract_id)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    items = session.execute(query.order_by(D.id.desc()).limit(limit).offset(offset)).scalars()
    return list(items), total


def ping(settings: Settings, sub: WebhookSubscription) -> dict[str, Any]:
    """Send one ``webhook.ping`` now, signed like every event; report what the receiver said."""
    event = ping_event(sub.id, _now())
    try:
        code = post_webhook(settings, sub.url, sub.secret, event, event_id=event["id"], content_type=CONTENT_TYPE)
        return {"event_id": event["id"], "delivered": True, "status_code": code, "error": None}
    except DeliveryError as exc:
        return {"event_id": event["id"], "delivered": False, "status_code": exc.code, "error": str(exc)[:1000]}
