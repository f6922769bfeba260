"""What a notice says about an item: one place for milestones, installments (chased by the sales
owner), approvals and the contract's end of term."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workflows.contract.payments import owed
from workflows.types import (
    ApprovalState,
    ContractState,
    InstallmentState,
    MilestoneState,
    NotificationPolicy,
    NotifyRequest,
)


@dataclass
class Term:
    """The contract's end date, as a timed item for reminders."""

    due_at: datetime
    title: str
    key: str = "term"
    reminders: list[str] | None = None


Item = MilestoneState | InstallmentState | ApprovalState | Term


def policy(state: ContractState) -> NotificationPolicy:
    return state.spec.policy or NotificationPolicy()


def facts(state: ContractState, item_type: str, item: Item) -> dict[str, Any]:
    s = state.spec
    base = dict(contract_id=s.contract_id, item_type=item_type, contract_title=s.title, customer=s.customer_name,
                amount=None, currency=None)
    if isinstance(item, (MilestoneState, ApprovalState)):
        return {**base, "item_key": item.key, "item_name": item.name, "owner": item.owner,
                "department": item.department}
    if isinstance(item, Term):
        return {**base, "item_key": "term", "item_name": f"End of term: {s.title}", "owner": s.owner,
                "department": "sales"}
    return {**base, "item_key": item.key, "item_name": f"Installment {item.key}", "owner": s.owner,
            "department": "sales", "amount": owed(state, item), "currency": s.currency}


def notice(state: ContractState, kind: str, item_type: str, item: Item, *, channels: list[str], level: int = 0,
           to: list[str] | None = None, cc: list[str] | None = None, days: int = 0, tag: str = "") -> NotifyRequest:
    return NotifyRequest(**facts(state, item_type, item), kind=kind, due_at=item.due_at, level=level,
                         to=list(to or ["owner"]), cc=list(cc or []), channels=list(channels), days=days, tag=tag)


def outbox_key(r: NotifyRequest) -> str:
    """The notice's key in the outbox; delivery adds recipient and channel for each message.  A
    notice sent at once is named by its event's number (``n<seq>``), a planned reminder by the
    due date it is for."""
    when = f"n{r.seq}" if r.seq else str(int(r.due_at.timestamp()) if r.due_at else 0)
    return f"{r.contract_id}:{r.item_type}:{r.item_key}:{when}:{r.kind}{r.level}{r.tag}"
