"""Request and response bodies for amendments and contract versions."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.contracts.schemas import InstallmentIn, MilestoneIn
from api.platform.fields import Amount, DateTimeIn, Strict

ChangeKind = Literal[
    "move_due",
    "change_owner",
    "add_milestone",
    "remove_milestone",
    "replace_milestone",
    "change_amount",
    "set_installments",
    "extend_end",
]


class AmendmentChangeIn(Strict):
    """One proposed change; which fields it needs depends on ``kind``."""

    kind: ChangeKind
    key: str | None = Field(default=None, max_length=60, description="The milestone or installment concerned")
    item_type: Literal["milestone", "installment"] = "milestone"
    shift: str | None = Field(default=None, max_length=40, description="move_due: ISO 8601, e.g. P10D or -P2D")
    due_at: DateTimeIn | None = Field(default=None, description="move_due: the new due date-time")
    owner: str | None = Field(default=None, max_length=100, description="change_owner: the new owner")
    department: str | None = Field(default=None, max_length=60)
    milestone: MilestoneIn | None = Field(default=None, description="add_milestone / replace_milestone")
    amount: Amount | None = Field(default=None, max_length=40, description="change_amount: the new total")
    installments: list[InstallmentIn] | None = Field(default=None, max_length=120, description="set_installments")
    end_at: DateTimeIn | None = Field(default=None, description="extend_end: the new end, an instant")
    end_date: str | None = Field(
        default=None, max_length=40,
        description="extend_end: the new last day of the term (ISO date, as end_date at creation: the term "
                    "runs to the end of that day in the business zone); give this or end_at")


class AmendmentRequestIn(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "reason": "Customer site not ready",
        "changes": [{"kind": "move_due", "key": "shipping", "shift": "P10D"}]}]})

    requested_by: str | None = Field(default=None, min_length=1, max_length=100,
                                     description="Who asks: yourself (default); admins and machines may name a person")
    reason: str = Field(min_length=1, max_length=4000, description="Why: every change is requested in writing")
    changes: list[AmendmentChangeIn] = Field(min_length=1, max_length=50)


class AmendmentDecisionIn(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "manager", "comment": "agreed"}]})

    by: str | None = Field(default=None, min_length=1, max_length=100,
                           description="Who decides: yourself (default); admins and machines may name a person")
    role: str | None = Field(default=None, max_length=40, description="approve/reject: the role decided for")
    comment: str = Field(default="", max_length=4000)


class WithdrawIn(Strict):
    by: str | None = Field(default=None, min_length=1, max_length=100,
                           description="Who decides: yourself (default); admins and machines may name a person")
    comment: str = Field(default="", max_length=4000)


class ClauseOut(BaseModel):
    clause: str
    label: str
    kind: str
    old: str | None
    new: str | None


class ItemImpactOut(BaseModel):
    item_type: str
    key: str
    name: str
    change: str
    old_due_at: datetime | None = None
    new_due_at: datetime | None = None
    shift_days: float | None = None
    old_owner: str | None = None
    new_owner: str | None = None
    old_amount: str | None = None
    new_amount: str | None = None
    overdue_before: bool
    overdue_after: bool


class ImpactOut(BaseModel):
    milestones: list[ItemImpactOut]
    installments: list[ItemImpactOut]
    old_amount: str
    new_amount: str
    amount_delta: str
    old_outstanding: str
    new_outstanding: str
    old_end_at: datetime
    new_end_at: datetime
    becomes_on_time: list[str]
    becomes_overdue: list[str]
    affected_people: list[str]
    clauses: list[ClauseOut]


class DecisionOut(BaseModel):
    by: str
    role: str
    decision: str
    comment: str
    at: datetime


class AmendmentOut(BaseModel):
    id: str
    number: int
    status: str
    requested_by: str
    reason: str
    requested_at: datetime
    required_roles: list[str]
    approvers: dict[str, str]
    missing_roles: list[str]
    decisions: list[DecisionOut]
    decided_at: datetime | None
    contract_version: int | None = Field(description="The version this amendment produced, once applied")
    based_on_version: int | None = Field(
        default=None, description="The contract version its impact was assessed on: once another amendment has "
                                  "changed the contract, it can no longer be approved (reject or withdraw it)")
    impact: ImpactOut
    changes: list[dict]


class AmendmentAccepted(AmendmentOut):
    current_contract_version: int


class VersionOut(BaseModel):
    version: int
    at: datetime
    amendment_id: str | None
    summary: str
    clauses: list[ClauseOut]
    approved_by: list[DecisionOut]
