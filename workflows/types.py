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
from enum import StrEnum

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

class ContractStatus(StrEnum):
    """``active`` from signature; the three others are final."""

    ACTIVE = "active"
    COMPLETED = "completed"
    TERMINATED = "terminated"
    EXPIRED = "expired"


class MilestoneStatus(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"  # progress reported
    DONE = "done"
    OVERDUE = "overdue"
    WAIVED = "waived"


class InstallmentStatus(StrEnum):
    PENDING = "pending"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    OVERDUE = "overdue"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    OVERDUE = "overdue"
    DONE = "done"


class AmendmentStatus(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


# The names earlier code (and the frozen legacy engine) uses.  StrEnum members are strings:
# they compare, hash and serialise as their value, so histories read and write the same.
ACTIVE, COMPLETED, TERMINATED, EXPIRED = (ContractStatus.ACTIVE, ContractStatus.COMPLETED,
                                          ContractStatus.TERMINATED, ContractStatus.EXPIRED)
PENDING, IN_PROGRESS, DONE, OVERDUE, WAIVED = (MilestoneStatus.PENDING, MilestoneStatus.IN_PROGRESS,
                                               MilestoneStatus.DONE, MilestoneStatus.OVERDUE, MilestoneStatus.WAIVED)
PARTIALLY_PAID, PAID = InstallmentStatus.PARTIALLY_PAID, InstallmentStatus.PAID


@dataclass(slots=True)
class DueRule:
    """When something is due: an absolute instant, or an ISO 8601 offset.

    With ``after`` the offset counts from the *actual* resolution of that milestone
    (a late shipping moves acceptance); without it, from the contract's effective date.
    """

    at: datetime | None = None
    offset: str | None = None  # ISO 8601 duration, e.g. "P5D", "PT10S"
    after: str | None = None  # milestone key


@dataclass(slots=True)
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


@dataclass(slots=True)
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


@dataclass(slots=True)
class BusinessDueRequest:
    base: datetime
    offset: str  # ISO 8601; whole days count as working days
    timezone: str = "Asia/Shanghai"


def default_approvals() -> dict[str, list[str]]:
    return {
        "schedule": ["manager"],  # due dates moved, end date extended
        "owner": ["manager"],  # a milestone handed to someone else
        "money": ["finance", "legal"],  # total amount or installment plan
        "scope": ["legal"],  # milestones added, removed or replaced
    }


@dataclass(slots=True)
class AmendmentPolicy:
    """Which roles approve which category of change, and the approval deadline."""

    approvals: dict[str, list[str]] = field(default_factory=default_approvals)
    approval_within: str = "P2D"  # ISO 8601; late approvals are reminded and escalated
    approval_reminders: list[str] = field(default_factory=lambda: ["P1D"])  # before the deadline


@dataclass(slots=True)
class RenewalPolicy:
    reminders: list[str] = field(default_factory=lambda: ["P60D", "P30D"])  # before the end date
    channels: list[str] = field(default_factory=lambda: ["email", "inbox"])
    auto_renew: bool = False
    term: str = "P1Y"  # length of the next term when auto-renewing


@dataclass(slots=True)
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
    planned_cost: str | None = None  # decimal string in the contract currency, for cost-overrun analytics


@dataclass(slots=True)
class InstallmentSpec:
    key: str
    amount: str  # decimal string in the contract currency
    due: DueRule


@dataclass(slots=True)
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
    erp_order_no: str | None = None  # the ERP's order number, for ERP progress batches
    # Who approves which kind of change, and how long approvers have (None: the defaults).
    amendments: AmendmentPolicy | None = None
    # Reminders before the end date and what happens at it (None in contracts started before
    # renewals existed).
    renewal: RenewalPolicy | None = None
    renewal_of: str | None = None  # the contract this one renews


# ---- operations (update and signal inputs) -------------------------------------------------


@dataclass(slots=True)
class PaymentInput:
    reference: str
    amount: str
    currency: str
    received_at: datetime
    by: str = "finance"
    # Set by the API, which writes the read model itself: the version its row held when the request
    # came in.  The workflow then answers with the delta (``projection``) instead of writing it.
    read_model_version: int | None = None


@dataclass(slots=True)
class PaymentResult:
    applied: bool
    outstanding: str
    credit: str
    reference: str
    allocations: dict[str, str] = field(default_factory=dict)
    projection: ProjectionDelta | None = None  # for the API to write (``read_model_version`` given)


@dataclass(slots=True)
class PaymentBatchInput:
    """Several payments in one update (a bank statement's lines for this contract), applied in order."""

    payments: list[PaymentInput]


@dataclass(slots=True)
class PaymentOutcome:
    """One payment of a batch: applied, already recorded (applied False, no error), or refused."""

    reference: str
    applied: bool = False
    outstanding: str = ""
    credit: str = ""
    allocations: dict[str, str] = field(default_factory=dict)
    error_type: str | None = None  # NotFound, Conflict, Invalid (workflows/errors.py)
    error: str | None = None


@dataclass(slots=True)
class CompleteMilestoneInput:
    key: str
    by: str
    note: str = ""
    actual_cost: str | None = None  # what the step really cost (decimal string)
    satisfaction: int | None = None  # 1-5, the customer's score, captured at acceptance
    # Set by the API, which writes the read model itself: the version its row held when the request
    # came in.  The workflow then answers with the delta (``projection``) instead of writing it.
    read_model_version: int | None = None


@dataclass(slots=True)
class ProgressInput:
    key: str
    percent: int
    message: str = ""
    source: str = ""
    # Set by the API, which writes the read model itself: the version its row held when the request
    # came in.  The workflow then answers with the delta (``projection``) instead of writing it.
    read_model_version: int | None = None


@dataclass(slots=True)
class WaiveMilestoneInput:
    key: str
    by: str
    reason: str
    # Set by the API, which writes the read model itself: the version its row held when the request
    # came in.  The workflow then answers with the delta (``projection``) instead of writing it.
    read_model_version: int | None = None


@dataclass(slots=True)
class TerminateInput:
    reason: str
    by: str = ""


@dataclass(slots=True)
class OperationResult:
    """What milestone and termination updates return: the contract after the change."""

    contract_status: str
    item_status: str | None = None
    version: int = 0
    changed: bool = True  # False: the same report was already recorded (a redelivery)
    projection: ProjectionDelta | None = None  # for the API to write (``read_model_version`` given)


@dataclass(slots=True)
class AmendmentChange:
    """One proposed change.  ``kind`` is one of:

    * ``move_due``       -- ``key`` (and ``item_type`` milestone|installment) moves by ``shift``
                            (ISO 8601, may be negative) or to ``due_at``; the new date is fixed;
    * ``change_owner``   -- milestone ``key`` gets ``owner`` (and ``department``);
    * ``add_milestone``  -- ``milestone`` is added;
    * ``remove_milestone`` -- milestone ``key`` is dropped (never a completed one);
    * ``replace_milestone`` -- milestone ``key`` is redefined by ``milestone``;
    * ``change_amount``  -- the total becomes ``amount``; without a new plan the difference goes
                            to the last installment not yet paid;
    * ``set_installments`` -- the installment plan becomes ``installments`` (paid ones stay);
    * ``extend_end``     -- the end date becomes ``end_at`` (later than today's).
    """

    kind: str
    key: str | None = None
    item_type: str = "milestone"
    shift: str | None = None
    due_at: datetime | None = None
    owner: str | None = None
    department: str | None = None
    milestone: MilestoneSpec | None = None
    amount: str | None = None
    installments: list[InstallmentSpec] | None = None
    end_at: datetime | None = None


@dataclass(slots=True)
class RequestAmendmentInput:
    amendment_id: str
    requested_by: str
    reason: str
    changes: list[AmendmentChange]
    # role -> the person asked to approve (resolved from the organisation by the API)
    approvers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class DecideAmendmentInput:
    amendment_id: str
    decision: str  # approve, reject, withdraw
    by: str
    role: str = ""  # the role approving or rejecting (manager, finance, legal, ...)
    comment: str = ""


@dataclass(slots=True)
class ApprovalRecord:
    by: str
    role: str
    decision: str  # approved, rejected, withdrawn
    comment: str
    at: datetime


@dataclass(slots=True)
class ClauseChange:
    """One clause of the contract, before and after: what a supplementary agreement lists."""

    clause: str  # e.g. "milestone.shipping.due", "amount", "installment.i3.amount"
    label: str  # human words: "Shipping: due date"
    kind: str  # date, money, text
    old: str | None
    new: str | None


@dataclass(slots=True)
class ItemImpact:
    item_type: str  # milestone, installment
    key: str
    name: str
    change: str  # moved, added, removed, owner, replaced, amount, unchanged
    old_due_at: datetime | None = None
    new_due_at: datetime | None = None
    shift_seconds: int | None = None
    old_owner: str | None = None
    new_owner: str | None = None
    old_amount: str | None = None
    new_amount: str | None = None
    overdue_before: bool = False
    overdue_after: bool = False


@dataclass(slots=True)
class AmendmentImpact:
    items: list[ItemImpact]
    old_amount: str
    new_amount: str
    amount_delta: str
    old_outstanding: str
    new_outstanding: str
    old_end_at: datetime
    new_end_at: datetime
    installments: list[ItemImpact]
    becomes_on_time: list[str]  # "milestone:shipping"
    becomes_overdue: list[str]
    affected_people: list[str]
    clauses: list[ClauseChange]


@dataclass(slots=True)
class AmendmentState:
    id: str
    number: int  # 1, 2, ... per contract
    requested_by: str
    reason: str
    changes: list[AmendmentChange]
    requested_at: datetime
    required_roles: list[str]
    approvers: dict[str, str]
    # None once the amendment is decided: its impact is kept in the read model (amendments table)
    impact: AmendmentImpact | None = None
    status: AmendmentStatus = AmendmentStatus.PENDING
    decisions: list[ApprovalRecord] = field(default_factory=list)
    decided_at: datetime | None = None
    contract_version: int | None = None  # the version it produced, when applied
    note: str = ""
    # The contract version its impact was assessed on (None: requested before this was kept).
    based_on_version: int | None = None


@dataclass(slots=True)
class AmendmentResult:
    amendment: AmendmentState
    contract_version: int
    created: bool = True  # False: the same amendment id was already requested


@dataclass(slots=True)
class ContractVersion:
    version: int
    at: datetime
    amendment_id: str | None
    summary: str
    clauses: list[ClauseChange] = field(default_factory=list)
    approvals: list[ApprovalRecord] = field(default_factory=list)


@dataclass(slots=True)
class AgreementRequest:
    """Render and store a supplementary agreement (补充协议) for an applied amendment."""

    contract_id: str
    amendment_id: str
    amendment_number: int
    contract_version: int
    contract_title: str
    customer_name: str
    customer_external_id: str | None
    contract_external_id: str | None
    original_effective_at: datetime
    effective_at: datetime
    currency: str
    reason: str
    requested_by: str
    clauses: list[ClauseChange]
    approvals: list[ApprovalRecord]


@dataclass(slots=True)
class ApprovalState:
    """One role's pending approval of an amendment: a timed item like a milestone, so it is
    reminded before its deadline and escalated after it."""

    key: str  # "<amendment id>:<role>"
    amendment_id: str
    role: str
    owner: str  # the person asked to approve
    department: str
    due_at: datetime
    status: ApprovalStatus = ApprovalStatus.PENDING
    due_estimated: bool = False
    overdue_since: datetime | None = None
    reminders: list[str] | None = None

    @property
    def name(self) -> str:
        return f"Approve amendment {self.amendment_id} ({self.role})"


@dataclass(slots=True)
class RenewalRequest:
    """Start the next term of a contract as a new contract linked to the old one."""

    spec: ContractSpec
    task_queue: str = ""


# ---- live state ----------------------------------------------------------------------------


@dataclass(slots=True)
class MilestoneState:
    key: str
    name: str
    kind: str
    owner: str
    department: str
    standard: str
    due: DueRule
    depends_on: list[str]
    status: MilestoneStatus = MilestoneStatus.PENDING
    due_at: datetime | None = None
    due_estimated: bool = False  # waits on an open predecessor: no timer yet
    progress: int = 0
    progress_message: str = ""
    completed_at: datetime | None = None
    completed_by: str | None = None
    note: str = ""
    overdue_since: datetime | None = None
    reminders: list[str] | None = None
    planned_cost: str | None = None
    actual_cost: str | None = None
    satisfaction: int | None = None
    # Reminders due before this instant are not sent: a hand-off (or notice) already told the
    # owner the date when the milestone became theirs.
    reminders_from: datetime | None = None


@dataclass(slots=True)
class InstallmentState:
    key: str
    amount: str
    due: DueRule
    paid: str = "0"
    status: InstallmentStatus = InstallmentStatus.PENDING
    due_at: datetime | None = None
    due_estimated: bool = False
    paid_at: datetime | None = None
    overdue_since: datetime | None = None


@dataclass(slots=True)
class PaymentRecord:
    reference: str
    amount: str
    currency: str
    received_at: datetime
    recorded_at: datetime
    by: str
    allocations: dict[str, str] = field(default_factory=dict)
    excess: str = "0"


@dataclass(slots=True)
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


@dataclass(slots=True)
class ContractState:
    spec: ContractSpec
    status: ContractStatus = ContractStatus.ACTIVE
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
    # Amendments: every request, the pending approvals, the versions they produced.
    contract_version: int = 1
    amendments: list[AmendmentState] = field(default_factory=list)
    approvals: list[ApprovalState] = field(default_factory=list)
    versions: list[ContractVersion] = field(default_factory=list)
    pending_documents: list[AgreementRequest] = field(default_factory=list)
    renewed_by: str | None = None  # the contract started for the next term
    pending_renewals: list[RenewalRequest] = field(default_factory=list)


@dataclass(slots=True)
class NotifyRequest:
    """One notification decision, sent by the ``notify`` activity exactly once per
    (item, due date or logging event, kind+level, recipient, channel)."""

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
    # A notice sent at once is logged as the contract's event number ``seq`` and keyed by it: a
    # workflow task that ran (its local activity wrote the notice) but was never recorded runs
    # again from the same state, emits the same event number, and so the same key (its due date
    # may differ: an approval's is "now" plus the policy's delay).  0: keyed by due date (reminders).
    seq: int = 0
    # A reminder: the contract version its plan was made at.  A task that is run again plans the
    # same reminder at the same version, whatever its clock: the outbox sends one (core/outbox.py).
    planned_at_version: int = 0


@dataclass(slots=True)
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


@dataclass(slots=True)
class ProjectionInput:
    """A snapshot plus the events not yet written: what the projection activity stores."""

    state: ContractState
    events: list[ContractEvent]
    workflow_id: str


@dataclass(slots=True)
class ContractOutcome:
    """What a contract's workflow returns when it closes: the verdict, not the whole state (which
    stays queryable with ``state_query`` and is in the read model).  Its fields are named as in
    ``ContractState``, so a result the legacy engine returned (a whole state) reads as one too."""

    status: ContractStatus = ContractStatus.ACTIVE
    closed_at: datetime | None = None
    close_reason: str = ""
    paid_total: str = "0"
    outstanding: str = "0"
    credit: str = "0"
    overdue_count: int = 0
    version: int = 0
    contract_version: int = 1
    run: int = 1

    @classmethod
    def of(cls, s: ContractState) -> ContractOutcome:
        return cls(s.status, s.closed_at, s.close_reason, s.paid_total, s.outstanding, s.credit, s.overdue_count,
                   s.version, s.contract_version, s.run)


@dataclass(slots=True)
class ContractWorkflowInput:
    spec: ContractSpec
    # Set when this run continues an earlier one: the whole state, and the events (and, from the
    # legacy engine, the notices) the earlier run had not yet handed on.
    carried: ContractState | None = None
    pending_events: list[ContractEvent] = field(default_factory=list)
    pending_notifications: list[NotifyRequest] = field(default_factory=list)
    # Tests set this to force continue-as-new early; 0 means "when Temporal suggests it".
    continue_as_new_after_events: int = 0


# ---- the projection delta (lean engine) ------------------------------------------------------


@dataclass(slots=True)
class ContractFacts:
    """The contract row's columns the workflow owns, as of ``ProjectionDelta.version``."""

    status: ContractStatus
    amount: str
    end_at: datetime
    paid_total: str
    outstanding: str
    credit: str
    overdue_count: int
    next_due_at: datetime | None = None
    closed_at: datetime | None = None
    close_reason: str = ""
    settled_at: datetime | None = None  # when the running total of payments reached the amount
    currency: str = ""  # fixed at creation; the item rows carry it for the money analytics


@dataclass(slots=True)
class MilestoneRow:
    position: int
    milestone: MilestoneState
    started_at: datetime | None = None  # the stage's start, for the stage-time analytics


@dataclass(slots=True)
class InstallmentRow:
    position: int
    installment: InstallmentState


@dataclass(slots=True)
class ScheduledNotice:
    """One notice for the notification outbox: sent by the dispatcher at ``send_at``, once per key."""

    key: str
    send_at: datetime
    request: NotifyRequest


@dataclass(slots=True)
class ReminderPlan:
    """Every reminder an item still wants; the outbox cancels its other unsent reminders."""

    item_type: str
    item_key: str
    notices: list[ScheduledNotice] = field(default_factory=list)


@dataclass(slots=True)
class ProjectionDelta:
    """What changed since the last projection: the contract's facts, the items that changed, new
    payments, events and notices.  Written by the ``project_delta`` local activity in one
    transaction; idempotent (events by seq, notices by key, the rest guarded by ``version``)."""

    contract_id: str
    workflow_id: str
    version: int
    facts: ContractFacts
    milestones: list[MilestoneRow] = field(default_factory=list)
    removed_milestones: list[str] = field(default_factory=list)
    installments: list[InstallmentRow] = field(default_factory=list)
    removed_installments: list[str] = field(default_factory=list)
    payments: list[PaymentRecord] = field(default_factory=list)
    events: list[ContractEvent] = field(default_factory=list)
    notices: list[ScheduledNotice] = field(default_factory=list)
    reminders: list[ReminderPlan] = field(default_factory=list)
    amendments: list[AmendmentState] = field(default_factory=list)  # changed, with their impact
    # The spec, in the first delta of a run only: to write the contract's row if it is missing.
    spec: ContractSpec | None = None
    # The version the read model must already hold for this delta to apply: the last delta the
    # workflow handed to the API to write (api-projection-v1).  Not there yet: nothing is written
    # (``ReadModelBehind``).
    requires_version: int | None = None
