"""Outgoing webhook subscriptions: CRUD, the delivery log, a test ping (docs/webhooks.md).

Thin: one transaction per call on the app's sessions, rules in ``core.webhooks.store``.  The
secret is write-only: returned once by ``POST /webhooks``, never by a read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from api.platform.fields import MAX_INT
from api.platform.problems import PROBLEM_RESPONSE, Problem, Responses
from api.webhooks import schemas
from api.webhooks.targets import require_public_target
from core.webhooks import store
from core.webhooks.events import EVENT_TYPES

_problem = PROBLEM_RESPONSE
ERRORS: Responses = {404: _problem, 422: _problem}
SubscriptionId = Annotated[str, Path(min_length=1, max_length=40, description="Subscription id")]

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def _missing(sid: str) -> Problem:
    return Problem(404, f"no webhook subscription {sid!r}", slug="not-found")


@router.get("/event-types", response_model=list[schemas.EventTypeOut])
def event_types():
    """Every event type a subscription can ask for (also ``"<family>.*"`` and ``"*"``)."""
    return [{"type": t, "description": d} for t, d in EVENT_TYPES.items()]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.WebhookCreated, responses=ERRORS)
def create_subscription(body: schemas.WebhookCreate, request: Request):
    """Subscribe a URL to contract events.  Delivery starts with the next event (or the whole log
    with ``replay_from_start``).  The answer carries the signing secret, once."""
    require_public_target(body.url, request.app.state.settings)
    with request.app.state.sessions.begin() as session:
        sub = store.create_subscription(session, **body.model_dump())
        return schemas.WebhookCreated.model_validate(sub, from_attributes=True)


@router.get("", response_model=list[schemas.WebhookOut])
def list_subscriptions(request: Request):
    with request.app.state.sessions() as session:
        return [schemas.WebhookOut.model_validate(s) for s in store.list_subscriptions(session)]


@router.get("/{subscription_id}", response_model=schemas.WebhookOut, responses=ERRORS)
def get_subscription(subscription_id: SubscriptionId, request: Request):
    with request.app.state.sessions() as session:
        sub = store.get_subscription(session, subscription_id)
        if sub is None:
            raise _missing(subscription_id)
        return schemas.WebhookOut.model_validate(sub)


@router.patch("/{subscription_id}", response_model=schemas.WebhookOut, responses=ERRORS)
def update_subscription(subscription_id: SubscriptionId, body: schemas.WebhookPatch, request: Request):
    """Change the fields given: ``active`` (pause/resume), ``event_types``, ``url``, ``secret``, ``description``."""
    require_public_target(body.url, request.app.state.settings)
    with request.app.state.sessions.begin() as session:
        sub = store.update_subscription(session, subscription_id, **body.model_dump(exclude_unset=True))
        if sub is None:
            raise _missing(subscription_id)
        return schemas.WebhookOut.model_validate(sub)


@router.delete("/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
def delete_subscription(subscription_id: SubscriptionId, request: Request):
    """Remove the subscription and its delivery log."""
    with request.app.state.sessions.begin() as session:
        if not store.delete_subscription(session, subscription_id):
            raise _missing(subscription_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{subscription_id}/deliveries", response_model=schemas.DeliveryPage, responses=ERRORS)
def list_deliveries(
    subscription_id: SubscriptionId,
    request: Request,
    status_: Annotated[schemas.DeliveryStatus | None, Query(alias="status")] = None,
    contract_id: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
):
    """The delivery log, newest first: one entry per event, with its attempts and outcome."""
    with request.app.state.sessions() as session:
        if store.get_subscription(session, subscription_id) is None:
            raise _missing(subscription_id)
        items, total = store.list_deliveries(
            session, subscription_id, status=status_, contract_id=contract_id, limit=limit, offset=offset
        )
        return {"items": [schemas.DeliveryOut.model_validate(d) for d in items], "total": total,
                "limit": limit, "offset": offset}


@router.post("/{subscription_id}/test", response_model=schemas.PingOut, responses=ERRORS)
def ping_subscription(subscription_id: SubscriptionId, request: Request):
    """Send a signed ``webhook.ping`` event now and report the receiver's answer (not logged, not retried)."""
    with request.app.state.sessions() as session:
        sub = store.get_subscription(session, subscription_id)
        if sub is None:
            raise _missing(subscription_id)
    return store.ping(request.app.state.settings, sub)
