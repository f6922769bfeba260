"""Request and response bodies of contracts: the contract integrating systems code against.

Field names and paths here are public; add optional fields, never rename one.
Money travels as decimal strings ("1234.50"); datetimes as ISO 8601 with a zone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.platform.fields import (
    APPROVER_ROLES_MAX,
    CURRENCY_ENUM,
    DEPENDS_ON_MAX,
    ESCALATION_LEVELS_MAX,
    INSTALLMENTS_MAX,
    KEY_MAX,
    MILESTONES_MAX,
    NAME_MAX,
    REMINDERS_MAX,
    STANDARD_MAX,
    TEXT_MAX,
    Amount,
    DateTimeIn,
    DurationText,
    IntIn,
    MilestoneKey,
    RoleName,
    Strict,
    received_too_late,
)

MilestoneKind = Literal[
    "order_review",
    "production_scheduling",
    "shipping",
    "customer_acceptance",
    "invoicing",
    "payment_collection",
    "renewal",
    "custom",
]


class CustomerIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    external_id: str | None = Field(default=None, max_length=100, description="The customer's id in the CRM")


class MilestoneIn(Strict):
    """A milestone, or an override of a playbook milestone with the same key."""

    key: str = Field(min_length=1, max_length=KEY_MAX, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str | None = Field(default=None, max_length=NAME_MAX)
    kind: MilestoneKind | None = None
    owner: str | None = Field(default=None, max_length=100, description="Exactly one owner")
    department: str | None = Field(default=None, max_length=60)
    standard: str | None = Field(default=None, max_length=STANDARD_MAX, description="Execution standard / checklist")
    due: DateTimeIn | None = Field(default=None, description="Absolute due date-time, with a zone")
    due_after: DurationText | None = Field(default=None, description="ISO 8601 duration, e.g. P5D or PT10S")
    after: str | None = Field(default=None, max_length=KEY_MAX, description="Milestone key the offset counts from")
    depends_on: list[MilestoneKey] | None = Field(default=None, max_length=DEPENDS_ON_MAX)
    reminders: list[DurationText] | None = Field(
        default=None, max_length=REMINDERS_MAX,
        description="This milestone's reminder offsets before due (ISO 8601), e.g. ['P2D']",
    )
    planned_cost: Amount | None = Field(default=None, max_length=40, description="Planned cost of this step")


class InstallmentIn(Strict):
    key: str = Field(min_length=1, max_length=KEY_MAX, pattern=r"^[A-Za-z0-9_.-]+$")
    amount: Amount
    due: DateTimeIn | None = None
    due_after: DurationText | None = None
    after: str | None = Field(default=None, max_length=KEY_MAX, description="Milestone key the offset counts from")


Role = Literal["owner", "manager", "manager_of_manager", "department_head"]
Channel = Literal["email", "webhook", "inbox"]


class EscalationLevelIn(Strict):
    after: DurationText = Field(description="ISO 8601 duration after the due time, e.g. PT0S, P3D")
    to: list[Role] = Field(min_length=1, max_length=4)
    cc: list[Role] = Field(default_factory=list, max_length=4)
    channels: list[Channel] = Field(min_length=1, max_length=3)


class NotificationPolicyIn(Strict):
    """Overrides the playbook's reminders (ISO 8601 durations before due) and escalation chain."""

    reminders: list[DurationText] | None = Field(default=None, max_length=REMINDERS_MAX)
    escalation: list[EscalationLevelIn] | None = Field(default=None, max_length=ESCALATION_LEVELS_MAX)
    business_days: bool | None = Field(
        default=None, description="Count day offsets in working days on China's official calendar"
    )


class RenewalIn(Strict):
    """Reminders before the end date, and whether the contract renews itself."""

    reminders: list[DurationText] | None = Field(
        default=None, max_length=REMINDERS_MAX, description="ISO 8601 before the end date; default P60D, P30D")
    auto_renew: bool | None = Field(default=None, description="Start the next term as a new, linked contract")
    term: DurationText | None = Field(default=None, description="Length of the next term (ISO 8601), default P1Y")


ApprovalCategory = Literal["schedule", "owner", "money", "scope"]


class AmendmentPolicyIn(Strict):
    approvals: dict[ApprovalCategory, Annotated[list[RoleName], Field(max_length=APPROVER_ROLES_MAX)]] | None = Field(
        default=None,
        description="Roles that approve each category of change; default schedule/owner: manager, "
        "money: finance + legal, scope: legal",
    )
    approval_within: DurationText | None = Field(default=None, description="Approval deadline (ISO 8601), default P2D")


class ContractCreate(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "title": "Supply of 40 CNC spindles", "customer": {"name": "Ningbo Precision Machinery Co."},
        "currency": "CNY", "amount": "1200000.00", "effective_date": "2026-11-27", "end_date": "2027-11-26",
        "owner": "li.wei", "playbook": "goods_sale"}]})

    external_id: str | None = Field(
        default=None, min_length=1, max_length=100, description="Your id; a repeat POST returns the same contract"
    )
    title: str = Field(min_length=1, max_length=300)
    customer: CustomerIn
    currency: str = Field(description="ISO 4217, e.g. CNY", json_schema_extra=CURRENCY_ENUM)
    amount: Amount
    effective_date: str = Field(max_length=40, description="ISO date (2026-03-01) or date-time with a zone")
    end_date: str = Field(max_length=40, description="ISO date (last day of the term) or date-time with a zone")
    owner: str = Field(min_length=1, max_length=100, description="The sales owner")
    erp_order_no: str | None = Field(
        default=None, min_length=1, max_length=60, description="The ERP's order number; ERP progress batches match on it"
    )
    playbook: str | None = Field(default=None, max_length=60)
    milestones: list[MilestoneIn] | None = Field(default=None, max_length=MILESTONES_MAX)
    installments: list[InstallmentIn] | None = Field(default=None, max_length=INSTALLMENTS_MAX)
    notifications: NotificationPolicyIn | None = None
    renewal: RenewalIn | None = None
    amendments: AmendmentPolicyIn | None = None


class ContractCreated(BaseModel):
    id: str
    workflow_id: str
    status: str
    external_id: str | None = None


class MilestoneOut(BaseModel):
    key: str
    name: str
    kind: str
    owner: str
    department: str
    standard: str
    status: str
    due_at: datetime | None
    due_estimated: bool
    depends_on: list[str]
    progress: int
    progress_message: str = ""
    completed_at: datetime | None
    completed_by: str | None = None
    planned_cost: str | None = None
    actual_cost: str | None = None
    satisfaction: int | None = None


class InstallmentOut(BaseModel):
    key: str
    due_at: datetime | None
    due_estimated: bool
    amount: str
    paid: str
    status: str
    paid_at: datetime | None = None


class PaymentOut(BaseModel):
    reference: str
    amount: str
    currency: str
    received_at: datetime
    recorded_at: datetime
    allocations: dict[str, str]
    excess: str


class ContractOut(BaseModel):
    id: str
    workflow_id: str
    external_id: str | None
    title: str
    customer: CustomerIn
    currency: str
    amount: str
    effective_at: datetime
    end_at: datetime
    owner: str
    playbook: str | None
    status: str
    milestones: list[MilestoneOut]
    installments: list[InstallmentOut]
    payments: list[PaymentOut]
    paid: str
    outstanding: str
    credit: str = Field(description="Received beyond the contract amount: to refund or carry over")
    overdue_count: int
    next_due_at: datetime | None
    version: int
    closed_at: datetime | None = None
    close_reason: str | None = None
    escalation_level: int = 0
    next_escalation_at: datetime | None = None
    temporal_ui: str | None = None


class ContractSummary(BaseModel):
    id: str
    workflow_id: str
    external_id: str | None
    title: str
    customer: str
    currency: str
    amount: str
    outstanding: str
    owner: str
    status: str
    overdue_count: int
    next_due_at: datetime | None
    playbook: str | None


class ContractPage(BaseModel):
    items: list[ContractSummary]
    total: int
    limit: int
    offset: int


class PaymentIn(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reference": "BANK-1", "amount": "400000.00", "currency": "CNY",
                                                         "received_at": "2026-11-27T10:00:00+08:00"}]})

    reference: str = Field(min_length=1, max_length=120, description=(
        "The bank transaction or receipt number; the same reference is the same payment (recorded once). "
        "Spaces around it are dropped and runs of spaces inside count as one; letter case counts."))
    amount: Amount
    currency: str = Field(description="ISO 4217: the contract's currency", json_schema_extra=CURRENCY_ENUM)
    received_at: DateTimeIn
    by: str | None = Field(default=None, min_length=1, max_length=100,
                           description="Who recorded it: yourself (default); admins and machines may name a person")

    @field_validator("received_at")
    @classmethod
    def _already_received(cls, value: datetime) -> datetime:
        why = received_too_late(value)
        if why:
            raise ValueError(why)
        return value

    @field_validator("reference")
    @classmethod
    def _one_spelling(cls, value: str) -> str:
        # "BANK-1 " must not count as a second payment of "BANK-1": the reference is the key
        # that keeps a transfer from being applied twice.
        value = " ".join(value.split())
        if not value:
            raise ValueError("a payment needs a reference (bank transaction or receipt number)")
        return value


class PaymentApplied(BaseModel):
    applied: bool
    outstanding: str
    credit: str
    reference: str
    allocations: dict[str, str]


class CompleteIn(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"note": "order reviewed"}]})

    by: str | None = Field(default=None, min_length=1, max_length=100,
                           description="Who acts: yourself (default); admins and machines may name a person")
    note: str = Field(default="", max_length=TEXT_MAX)
    actual_cost: Amount | None = Field(default=None, max_length=40, description="What the step really cost")
    satisfaction: IntIn | None = Field(default=None, ge=1, le=5, description="Customer acceptance: score 1-5")


class ProgressIn(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"percent": 40, "message": "16 of 40 shipped", "source": "erp"}]})

    percent: IntIn = Field(ge=0, le=100)
    message: str = Field(default="", max_length=TEXT_MAX)
    source: str = Field(default="", max_length=100)


class WaiveIn(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "not needed for this customer"}]})

    by: str | None = Field(default=None, min_length=1, max_length=100,
                           description="Who acts: yourself (default); admins and machines may name a person")
    reason: str = Field(min_length=1, max_length=TEXT_MAX)


class TerminateIn(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "customer cancelled the order"}]})

    reason: str = Field(min_length=1, max_length=TEXT_MAX)
    by: str | None = Field(default=None, min_length=1, max_length=100,
                           description="Who acts: yourself (default); admins and machines may name a person")


class OperationOut(BaseModel):
    contract_status: str
    item_status: str | None = None
    version: int
    changed: bool = Field(default=True, description="False when the same report was already recorded")


class EventOut(BaseModel):
    # The workflow's event number; null for an event recorded outside the workflow (a reminder
    # the notification outbox sent), which is listed in the order it happened.
    seq: int | None
    event_id: str  # the CloudEvents id a webhook subscriber receives it under
    type: str
    at: datetime
    actor: str
    data: dict


class PlaybookOut(BaseModel):
    name: str
    title: str
    milestones: list[dict]
    installments: list[dict]
