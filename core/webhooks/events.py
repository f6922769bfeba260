"""What a webhook subscriber receives: CloudEvents 1.0, structured mode, JSON (docs/webhooks.md).

One contract event (a ``contract_events`` row) becomes one CloudEvent whose ``id`` is
``"<contract_id>:<seq>"``: the same on every retry and from every dispatcher replica, so a
receiver deduplicates on it.  The body is built only from the stored row and the contract's CRM
ids, so a retried event is byte-for-byte the same JSON (the signature header differs: it signs
the attempt's timestamp).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
PING_TYPE = "webhook.ping"

#: Every event type a subscription can ask for, by family.  ``"*"`` means all of them (and any
#: added later); ``"<family>.*"`` a whole family.  Keep in step with docs/webhooks.md.
EVENT_TYPES: dict[str, str] = {
    "contract.created": "a signed contract was registered; its workflow runs",
    "contract.completed": "every milestone done or waived and nothing outstanding",
    "contract.terminated": "ended by request",
    "contract.expired": "the end date passed with nothing owed but milestones open",
    "contract.term_ended": "the end date passed while money is still owed (the contract stays active)",
    "contract.continued": "the contract's workflow continued as new (housekeeping; nothing changed)",
    "contract.renewed": "the end date came and the next term was set up as a new, linked contract",
    "milestone.progress": "progress reported (percent, message, source)",
    "milestone.completed": "a milestone was completed (late: whether it was overdue)",
    "milestone.waived": "a milestone was waived, with the reason",
    "milestone.overdue": "a milestone fell due unresolved",
    "installment.paid": "an installment is fully paid",
    "installment.overdue": "an installment fell due with money owed",
    "payment.received": "money received and allocated to installments",
    "payment.overpaid": "a payment exceeded what was owed; the excess is held as credit",
    "amendment.requested": "a change to the contract was requested (with its impact)",
    "amendment.approval": "one required role approved an amendment",
    "amendment.approved": "every required role approved an amendment",
    "amendment.rejected": "an amendment was rejected",
    "amendment.withdrawn": "the requester withdrew an amendment",
    "amendment.applied": "an approved amendment changed the contract (new contract version)",
    "approval.overdue": "an amendment's approval passed its deadline undecided (it is escalated)",
    "document.created": "a document (e.g. a supplementary agreement) was generated",
    "document.failed": "a document could not be generated",
    "renewal.started": "the next term's contract was registered and its workflow started",
    "renewal.failed": "the next term's contract could not be started",
    "notification.reminder": "a reminder before a due date was sent",
    "notification.escalation": "an overdue item was escalated",
    "notification.handoff": "the next milestone's owner was handed the work",
    "notification.approval": "an approver was asked to decide an amendment",
    "notification.amended": "an owner was told an amendment changed their milestone",
    "notification.failed": "a notice could not be delivered",
    "escalation.stopped": "an item's escalation stopped (the item was resolved)",
    "escalation.failed": "an escalation could not run",
    "signal.rejected": "a fire-and-forget signal was invalid and changed nothing",
    "calendar.unavailable": "working-day arithmetic had no published holiday schedule",
}
FAMILIES = sorted({t.split(".", 1)[0] for t in EVENT_TYPES})


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid subscription filter, or None if it is."""
    if pattern == "*":
        return None
    if pattern.endswith(".*"):
        family = pattern[:-2]
        return None if family in FAMILIES else f"unknown event family {family!r} (one of {', '.join(FAMILIES)})"
    if pattern in EVENT_TYPES:
        return None
    return f"unknown event type {pattern!r}; see GET /webhooks/event-types"


def matches(patterns: Iterable[str], event_type: str) -> bool:
    """Whether a subscription with these filters wants ``event_type``."""
    return any(p == "*" or p == event_type or (p.endswith(".*") and event_type.startswith(p[:-1])) for p in patterns)


def _rfc3339(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def event_id(contract_id: str, seq: int | None, row_id: int | None = None) -> str:
    """``<contract>:<seq>``; an event recorded outside the workflow (a reminder the notification
    outbox sent) has no seq and is named by its row: ``<contract>:r<id>``."""
    return f"{contract_id}:{seq}" if seq is not None else f"{contract_id}:r{row_id}"


def _subject(event_type: str, data: dict[str, Any]) -> str | None:
    family = event_type.split(".", 1)[0]
    if family in ("milestone", "installment") and data.get("key"):
        return f"{family}s/{data['key']}"
    if family == "amendment" and data.get("amendment_id"):
        return f"amendments/{data['amendment_id']}"
    if family == "payment" and data.get("reference"):
        return f"payments/{data['reference']}"
    if family == "document" and data.get("document_id"):
        return f"documents/{data['document_id']}"
    if family in ("notification", "escalation") and data.get("item_type") and data.get("key"):
        return f"{data['item_type']}s/{data['key']}"
    return None


def cloud_event(
    *,
    contract_id: str,
    seq: int | None,
    type: str,
    at: datetime,
    actor: str,
    data: dict[str, Any] | None,
    contract_external_id: str | None,
    customer_external_id: str | None,
    row_id: int | None = None,
) -> dict[str, Any]:
    """The CloudEvent for one stored contract event (a plain dict, JSON-ready)."""
    body = dict(data or {})
    body.update(
        contract_id=contract_id,
        contract_external_id=contract_external_id,
        customer_external_id=customer_external_id,
        actor=actor,
        seq=seq,
    )
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id(contract_id, seq, row_id),
        "source": f"/contracts/{contract_id}",
        "type": type,
        "time": _rfc3339(at),
        "datacontenttype": "application/json",
    }
    subject = _subject(type, body)
    if subject:
        event["subject"] = subject
    event["data"] = body
    return event


def ping_event(subscription_id: str, now: datetime) -> dict[str, Any]:
    """A test event for ``POST /webhooks/{id}/test``; never in the delivery log."""
    return {
        "specversion": SPECVERSION,
        "id": f"ping:{uuid.uuid4().hex}",
        "source": f"/webhooks/{subscription_id}",
        "type": PING_TYPE,
        "time": _rfc3339(now),
        "datacontenttype": "application/json",
        "data": {"subscription_id": subscription_id, "message": "ping from contract tracking"},
    }
