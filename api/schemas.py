"""Request and response bodies: the contract integrating systems code against.

Field names and paths here are public; add optional fields, never rename one.
Money travels as decimal strings ("1234.50"); datetimes as ISO 8601 with a zone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

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

Amount = str  # a decimal string; validated against the currency by the service layer


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    external_id: str | None = Field(default=None, max_length=100, description="The customer's id in the CRM")


class MilestoneIn(Strict):
    """A milestone, or an override of a playbook milestone with the same key."""

    key: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str | None = Field(default=None, max_length=200)
    kind: MilestoneKind | None = None
    owner: str | None = Field(default=None, max_length=100, description="Exactly one owner")
    department: str | None = Field(default=None, max_length=60)
    standard: str | None = Field(default=None, description="Execution standard / checklist")
    due: AwareDatetime | None = Field(default=None, description="Absolute due date-time, with a zone")
    due_after: str | None = Field(default=None, description="ISO 8601 duration, e.g. P5D or PT10S")
    after: str | None = Field(default=None, description="Milestone key the offset counts from")
    depends_on: list[str] | None = None
    reminders: list[str] | None = Field(
        default=None, description="This milestone's reminder offsets before due (ISO 8601), e.g. ['P2D']"
    )


class InstallmentIn(Strict):
    key: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.-]+$")
    amount: Amount
    due: AwareDatetime | None = None
    due_after: str | None = None
    after: str | None = Field(default=None, description="Milestone key the offset counts from")


Role = Literal["owner", "manager", "manager_of_manager", "department_head"]
Channel = Literal["email", "webhook", "inbox"]


class EscalationLevelIn(Strict):
    after: str = Field(description="ISO 8601 duration after the due time, e.g. PT0S, P3D")
    to: list[Role] = Field(min_length=1)
    cc: list[Role] = Field(default_factory=list)
    channels: list[Channel] = Field(min_length=1)


class NotificationPolicyIn(Strict):
    """Overrides the playbook's reminders (ISO 8601 durations before due) and escalation chain."""

    reminders: list[str] | None = None
    escalation: list[EscalationLevelIn] | None = None
    business_days: bool | None = Field(
        default=None, description="Count day offsets in working days on China's official calendar"
    )


class RenewalIn(Strict):
    """Reminders before the end date, and whether the contract renews itself."""

    reminders: list[str] | None = Field(default=None, description="ISO 8601 before the end date; default P60D, P30D")
    auto_renew: bool | None = Field(default=None, description="Start the next term as a new, linked contract")
    term: str | None = Field(default=None, description="Length of the next term (ISO 8601), default P1Y")


ApprovalCategory = Literal["schedule", "owner", "money", "scope"]


class AmendmentPolicyIn(Strict):
    approvals: dict[ApprovalCategory, list[str]] | None = Field(
        default=None,
        description="Roles that approve each category of change; default schedule/owner: manager, "
        "money: finance + legal, scope: legal",
    )
    approval_within: str | None = Field(default=None, description="Approval deadline (ISO 8601), default P2D")


class ContractCreate(Strict):
    external_id: str | None = Field(default=None, max_length=100, description="Your id; a repeat POST returns the same contract")
    title: str = Field(min_length=1, max_length=300)
    customer: CustomerIn
    currency: str = Field(description="ISO 4217, e.g. CNY")
    amount: Amount
    effective_date: str = Field(description="ISO date (2026-03-01) or date-time with a zone")
    end_date: str = Field(description="ISO date (last day of the term) or date-time with a zone")
    owner: str = Field(min_length=1, max_length=100, description="The sales owner")
    erp_order_no: str | None = Field(
        default=None, min_length=1, max_length=60, description="The ERP's order number; ERP progress batches match on it"
    )
    playbook: str | None = None
    milestones: list[MilestoneIn] | None = None
    installments: list[InstallmentIn] | None = None
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
    reference: str = Field(min_length=1, max_length=120)
    amount: Amount
    currency: str
    received_at: AwareDatetime
    by: str = Field(default="finance", max_length=100)


class PaymentApplied(BaseModel):
    applied: bool
    outstanding: str
    credit: str
    reference: str
    allocations: dict[str, str]


class CompleteIn(Strict):
    by: str = Field(min_length=1, max_length=100)
    note: str = ""


class ProgressIn(Strict):
    percent: int = Field(ge=0, le=100)
    message: str = ""
    source: str = Field(default="", max_length=100)


class WaiveIn(Strict):
    by: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1)


class TerminateIn(Strict):
    reason: str = Field(min_length=1)
    by: str = Field(default="", max_length=100)


class OperationOut(BaseModel):
    contract_status: str
    item_status: str | None = None
    version: int
    changed: bool = Field(default=True, description="False when the same report was already recorded")


class EventOut(BaseModel):
    seq: int
    type: str
    at: datetime
    actor: str
    data: dict


class PlaybookOut(BaseModel):
    name: str
    title: str
    milestones: list[dict]
    installments: list[dict]


# ---------------------------------------------------------------- people, departments, inbox, notifications
Locale = Literal["zh", "en"]
_ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
_EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class UserCreate(Strict):
    id: str = Field(min_length=1, max_length=100, pattern=_ID_PATTERN, description="The login, e.g. li.wei")
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320, pattern=_EMAIL_PATTERN)
    department: str | None = Field(default=None, max_length=60)
    manager_id: str | None = Field(default=None, max_length=100, description="Escalations copy this manager")
    locale: Locale = "zh"
    active: bool = True


class UserPatch(Strict):
    """Only the fields present change; department and manager_id may be set to null."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, min_length=3, max_length=320, pattern=_EMAIL_PATTERN)
    department: str | None = Field(default=None, max_length=60)
    manager_id: str | None = Field(default=None, max_length=100)
    locale: Locale | None = None
    active: bool | None = None


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    email: str
    department: str | None
    manager_id: str | None
    locale: str
    active: bool
    created_at: datetime


class DepartmentPut(Strict):
    name: str = Field(min_length=1, max_length=200)
    head_id: str | None = Field(default=None, max_length=100)
    default_assignee_id: str | None = Field(default=None, max_length=100, description="Takes the department's hand-offs")
    webhook_url: str | None = Field(default=None, max_length=500, pattern=r"^https?://", description="Chat-bot webhook")
    webhook_secret: str | None = Field(
        default=None, max_length=200,
        description="Signing secret; write-only. On PUT, leaving it out keeps the stored one, null clears it.",
    )


class DepartmentCreate(DepartmentPut):
    key: str = Field(min_length=1, max_length=60, pattern=_ID_PATTERN, description="e.g. finance, as on milestones")


class DepartmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str
    name: str
    head_id: str | None
    default_assignee_id: str | None
    webhook_url: str | None
    webhook_secret_set: bool = Field(description="Whether a webhook secret is stored (the secret is never returned)")


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    key: str
    contract_id: str
    milestone_key: str | None
    assignee: str
    title: str
    body: str
    status: Literal["open", "acked", "done"]
    created_at: datetime
    acked_at: datetime | None
    acked_by: str | None


class TaskAck(Strict):
    by: str = Field(min_length=1, max_length=100)


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    key: str
    contract_id: str
    item_type: str
    item_key: str
    level: int
    kind: str
    recipient: str
    role: str
    channel: str
    subject: str
    body: str
    status: Literal["decided", "sent", "failed"]
    error: str | None
    created_at: datetime
    sent_at: datetime | None
    attempts: int
