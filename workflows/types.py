"""Dataclasses shared by the contract workflow, its activities and its starters.

They are the wire format between the API, Temporal and the worker, so they hold only
plain types: money travels as decimal *strings* (Temporal's JSON converter has no
Decimal) and is turned into ``Decimal`` the moment it is used; datetimes are
timezone-aware.  Changing a field here changes saved workflow histories: add fields
with defaults, never rename or remove one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

MILESTONE_KINDS = (
    "order_review",
    "production_scheduling",
    "shipping",
    "customer_acceptance",
    "invoicing",
    "payment_collection",
    "renewal",
    "custom",
)

# Contract statuses.  ``active`` from signature; the three others are final.
ACTIVE, COMPLETED, TERMINATED, EXPIRED = "active", "completed", "terminated", "expired"

# Milestone statuses.
PENDING, IN_PROGRESS, DONE, OVERDUE, WAIVED = "pending", "in_progress", "done", "overdue", "waived"
# Installment statuses (plus PENDING and OVERDUE).
PARTIALLY_PAID, PAID = "partially_paid", "paid"


@dataclass
class DueRule:
    """When something is due: an absolute instant, or an ISO 8601 offset.

    With ``after`` the offset counts from the *actual* resolution of that milestone
    (a late shipping moves acceptance); without it, from the contract's effective date.
    """

    at: datetime | None = None
    offset: str | None = None  # ISO 8601 duration, e.g. "P5D", "PT10S"
    after: str | None = None  # milestone key


@dataclass
class EscalationLevel:
    """One step of an escalation chain: ``after`` the due time, notify ``to`` (copying ``cc``).

    Roles: ``owner`` (the item's single owner), ``manager`` (the owner's manager),
    ``manager_of_manager``, ``department_head`` (of the item's department).
    """

    after: str  # ISO 8601 duration after the due time, e.g. "P3D"
    to: list[str] = field(default_factory=lambda: ["owner"])
    cc: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=lambda: ["email", "inbox"])


def default_escalation() -> list[EscalationLevel]:
    return [
        EscalationLevel("PT0S", ["owner"], [], ["email", "inbox", "webhook"]),
        EscalationLevel("P3D", ["owner"], ["manager"], ["email", "webhook"]),
        EscalationLevel("P7D", ["manager_of_manager"], ["department_head"], ["email", "webhook"]),
    ]


@dataclass
class NotificationPolicy:
    """Reminders before due and the escalation chain after it; from the playbook or the contract."""

    reminders: list[str] = field(default_factory=lambda: ["P7D", "P1D"])  # before the due time
    reminder_channels: list[str] = field(default_factory=lambda: ["email", "inbox"])
    escalation: list[EscalationLevel] = field(default_factory=default_escalation)
    handoff_channels: list[str] = field(default_factory=lambda: ["email", "inbox"])
    # Count day offsets in working days on China's official calendar (holidays and make-up
    # working days) and move due dates off non-working days.  Computed by an activity.
    business_days: bool = False
    business_timezone: str = "Asia/Shanghai"


@dataclass
class BusinessDueRequest:
    base: datetime
    offset: str  # ISO 8601; whole days count as working days
    timezone: str = "Asia/Shanghai"


@dataclass
class MilestoneSpec:
    key: str
    name: str
    kind: str
    owner: str
    department: str
    due: DueRule
    standard: str = ""
    depends_on: list[str] = field(default_factory=list)
    reminders: list[str] | None = None  # overrides the contract's reminder offsets for this step


@dataclass
class InstallmentSpec:
    key: str
    amount: str  # decimal string in the contract currency
    due: DueRule


@dataclass
class ContractSpec:
    """Everything the workflow needs to run one contract, fully expanded (no playbook lookups)."""

    contract_id: str
    title: str
    customer_name: str
    customer_external_id: str | None
    currency: str
    amount: str
    effective_at: datetime
    end_at: datetime
    owner: str
    milestones: list[MilestoneSpec]
    installments: list[InstallmentSpec]
    playbook: str | None = None
    external_id: str | None = None
    minor_units: int = 2  # ISO 4217 exponent of the currency
    # Offsets without ``after`` count from here: the later of the effective date and the
    # moment the contract was registered (a contract registered late is not born overdue).
    clock_start: datetime | None = None
    # None in contracts started before notifications existed (their histories replay as before).
    policy: NotificationPolicy | None = None


# ---- operations (update and signal inputs) -------------------------------------------------


@dataclass
class PaymentInput:
    reference: str
    amount: str
    currency: str
    received_at: datetime
    by: str = "finance"


@dataclass
class PaymentResult:
    applied: bool
    outstanding: str
    credit: str
    reference: str
    allocations: dict[str, str] = field(default_factory=dict)


@dataclass
class CompleteMilestoneInput:
    key: str
    by: str
    note: str = ""


@dataclass
class ProgressInput:
    key: str
    percent: int
    message: str = ""
    source: str = ""


@dataclass
class WaiveMilestoneInput:
    key: str
    by: str
    reason: str


@dataclass
class TerminateInput:
    reason: str
    by: str = ""


@dataclass
class OperationResult:
    """What milestone and termination updates return: the contract after the change."""

    contract_status: str
    item_status: str | None = None
    version: int = 0


# ---- live state ----------------------------------------------------------------------------


@dataclass
class MilestoneState:
    key: str
    name: str
    kind: str
    owner: str
    department: str
    standard: str
    due: DueRule
    depends_on: list[str]
    status: str = PENDING
    due_at: datetime | None = None
    due_estimated: bool = False  # waits on an open predecessor: no timer yet
    progress: int = 0
    progress_message: str = ""
    completed_at: datetime | None = None
    completed_by: str | None = None
    note: str = ""
    overdue_since: datetime | None = None
    reminders: list[str] | None = None


@dataclass
class InstallmentState:
    key: str
    amount: str
    due: DueRule
    paid: str = "0"
    status: str = PENDING
    due_at: datetime | None = None
    due_estimated: bool = False
    paid_at: datetime | None = None
    overdue_since: datetime | None = None


@dataclass
class PaymentRecord:
    reference: str
    amount: str
    currency: str
    received_at: datetime
    recorded_at: datetime
    by: str
    allocations: dict[str, str] = field(default_factory=dict)
    excess: str = "0"


@dataclass
class ContractEvent:
    """One entry of the contract's append-only event log.

    ``seq`` is assigned by the workflow and survives continue-as-new, so
    ``(contract_id, seq)`` is a stable idempotency key for the projection.
    """

    seq: int
    type: str
    at: datetime
    data: dict = field(default_factory=dict)
    actor: str = "system"


@dataclass
class ContractState:
    spec: ContractSpec
    status: str = ACTIVE
    milestones: list[MilestoneState] = field(default_factory=list)
    installments: list[InstallmentState] = field(default_factory=list)
    payments: list[PaymentRecord] = field(default_factory=list)
    outstanding: str = "0"
    paid_total: str = "0"
    credit: str = "0"  # money received beyond the contract amount, owed back or carried
    version: int = 0  # last event seq
    closed_at: datetime | None = None
    close_reason: str = ""
    past_end: bool = False
    next_due_at: datetime | None = None
    overdue_count: int = 0
    run: int = 1  # which continue-as-new run this is, for operators
    # Reminders already sent: "item_type:key:due_at:offset", so a moved due date reminds anew.
    reminders_sent: list[str] = field(default_factory=list)
    # Working-day results from the calendar activity, "base|offset" -> due, so replays and
    # library upgrades never recompute them.
    calendar: dict[str, datetime] = field(default_factory=dict)
    escalation_level: int = 0  # highest escalation level reached by any open item
    next_escalation_at: datetime | None = None


@dataclass
class NotifyRequest:
    """One notification decision, sent by the ``notify`` activity exactly once per
    (item, due date, kind+level, recipient, channel)."""

    contract_id: str
    kind: str  # reminder, escalation, handoff
    item_type: str  # milestone, installment
    item_key: str
    item_name: str
    owner: str
    department: str
    due_at: datetime | None
    level: int
    to: list[str]  # roles (owner, manager, ...) or "user:<id>"
    cc: list[str]
    channels: list[str]
    days: int = 0
    contract_title: str = ""
    customer: str = ""
    amount: str | None = None
    currency: str | None = None
    tag: str = ""  # tells apart notices of the same kind and level (e.g. the reminder offset)


@dataclass
class EscalationInput:
    contract_id: str
    parent_workflow_id: str
    item_type: str
    item_key: str
    item_name: str
    owner: str
    department: str
    due_at: datetime
    levels: list[EscalationLevel]
    contract_title: str = ""
    customer: str = ""
    amount: str | None = None
    currency: str | None = None


@dataclass
class ProjectionInput:
    """A snapshot plus the events not yet written: what the projection activity stores."""

    state: ContractState
    events: list[ContractEvent]
    workflow_id: str
