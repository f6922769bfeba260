"""Request and response bodies: the contract integrating systems code against.

Field names and paths here are public; add optional fields, never rename one.
Money travels as decimal strings ("1234.50"); datetimes as ISO 8601 with a zone.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Literal

from babel.numbers import list_currencies
from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import Strict as StrictMode

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

# A decimal string; validated against the currency by the service layer.
Amount = Annotated[str, Field(max_length=40)]
# Largest integer a query or path parameter may carry: the databases' INTEGER (beyond it: 422, not a
# driver overflow).
MAX_INT = 2_147_483_647
# ISO 4217 codes the service knows (core.money checks against the same list, with its own message).
CURRENCIES = sorted(list_currencies())


# ---------------------------------------------------------------- limits (README "Limits")
# Dates: years 1970 to 2200.  Outside them a date is a typing mistake, and what the service does
# with a date (time zones, adding durations of up to a century: core/durations.MAX_DURATION)
# would leave the range Python's datetime holds (years 1 to 9999): a 500, never a useful answer.
MIN_YEAR, MAX_YEAR = 1970, 2200
SUPPORTED_DATES = f"years {MIN_YEAR} to {MAX_YEAR}"
# Free text: what a person writes in one field.
NAME_MAX = 200  # names of people, customers, milestones
TEXT_MAX = 2000  # notes, messages, reasons
STANDARD_MAX = 4000  # a milestone's execution standard / checklist
DURATION_MAX_CHARS = 40  # an ISO 8601 duration's text (its length is capped by core/durations)
KEY_MAX = 60  # milestone and installment keys
# Lists: how many items one request may carry.
MILESTONES_MAX = 200
INSTALLMENTS_MAX = 120
DEPENDS_ON_MAX = 50
REMINDERS_MAX = 10
ESCALATION_LEVELS_MAX = 10
APPROVER_ROLES_MAX = 10
# Milestones (or installments) one contract holds once built, a playbook's repeating steps included.
CONTRACT_ITEMS_MAX = 500


def in_supported_years(value):
    """A date or date-time within MIN_YEAR..MAX_YEAR (see above)."""
    if value is not None and not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"{value.isoformat()} is outside the supported dates ({SUPPORTED_DATES})")
    return value


class Strict(BaseModel):
    # strict: JSON types as declared in the OpenAPI document -- 0/1 are not booleans, "5" is not an
    # integer, a number is not a string (date-times and integers: see DateTimeIn, IntIn).  Unknown
    # fields are refused.
    model_config = ConfigDict(extra="forbid", strict=True)


_DATETIME_TEXT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")


def _datetime_text(value: object) -> object:
    """A date-time travels as text (RFC 3339); a number is not one (pydantic would read a Unix time)."""
    if isinstance(value, datetime) or (isinstance(value, str) and _DATETIME_TEXT.match(value)):
        return value
    raise ValueError("expected a date-time with a zone, e.g. 2026-11-27T10:00:00+08:00")


# A request date-time: RFC 3339 text with a zone, within the supported years.
DateTimeIn = Annotated[AwareDatetime, StrictMode(False), BeforeValidator(_datetime_text),
                       AfterValidator(in_supported_years)]
# The same without the years: where a batch judges each line's date on its own (finance statements).
AnyDateTimeIn = Annotated[AwareDatetime, StrictMode(False), BeforeValidator(_datetime_text)]


_DATE_TEXT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _date_text(value: object) -> object:
    """A date travels as YYYY-MM-DD; "0" is not one (pydantic would read a Unix time)."""
    if isinstance(value, date) or (isinstance(value, str) and _DATE_TEXT.match(value)):
        return value
    raise ValueError("expected a date such as 2026-11-27")


# A request (or query) date: RFC 3339 full-date.
DateIn = Annotated[date, StrictMode(False), BeforeValidator(_date_text), AfterValidator(in_supported_years)]
# An ISO 8601 duration's text; what it says is checked by the service layer (core/durations.check_duration).
DurationText = Annotated[str, Field(max_length=DURATION_MAX_CHARS)]
MilestoneKey = Annotated[str, Field(min_length=1, max_length=KEY_MAX)]
RoleName = Annotated[str, Field(min_length=1, max_length=40)]


def _json_integer(value: object) -> object:
    """A JSON integer: 5, or 5.0 (JSON Schema counts it as an integer); not "5", not true."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected an integer")
    return value


# A request integer, as JSON Schema reads "integer" (2.0 is one, 2.5 and "2" are not).
IntIn = Annotated[int, StrictMode(False), BeforeValidator(_json_integer)]


def not_nullable(*fields: str):
    """json_schema_extra for PATCH bodies: these fields may be left out but not set to null (the
    service refuses null with a 422), so the document must not offer null for them."""

    def extra(schema: dict, _model: type) -> None:
        for name in fields:
            prop = schema["properties"][name]
            variants = [v for v in prop.pop("anyOf", []) if v.get("type") != "null"]
            if len(variants) == 1:
                prop.update(variants[0])
            elif variants:
                prop["anyOf"] = variants
            prop.pop("default", None)

    return extra


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
    currency: str = Field(description="ISO 4217, e.g. CNY", json_schema_extra={"enum": CURRENCIES})
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

    reference: str = Field(min_length=1, max_length=120)
    amount: Amount
    currency: str = Field(description="ISO 4217: the contract's currency", json_schema_extra={"enum": CURRENCIES})
    received_at: DateTimeIn
    by: str | None = Field(default=None, min_length=1, max_length=100,
                           description="Who recorded it: yourself (default); admins and machines may name a person")


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
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "wu.lei", "name": "Wu Lei", "email": "wu.lei@example.com",
                                                         "department": "sales", "manager_id": "zhang.min"}]})

    id: str = Field(min_length=1, max_length=100, pattern=_ID_PATTERN, description="The login, e.g. li.wei")
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320, pattern=_EMAIL_PATTERN)
    department: str | None = Field(default=None, min_length=1, max_length=60, pattern=_ID_PATTERN)
    manager_id: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=_ID_PATTERN, description="Escalations copy this manager"
    )
    locale: Locale = "zh"
    active: bool = True


class UserPatch(Strict):
    """Only the fields present change; department and manager_id may be set to null."""

    model_config = ConfigDict(json_schema_extra=not_nullable("name", "email", "locale", "active"))

    name: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, min_length=3, max_length=320, pattern=_EMAIL_PATTERN)
    department: str | None = Field(default=None, min_length=1, max_length=60, pattern=_ID_PATTERN)
    manager_id: str | None = Field(default=None, min_length=1, max_length=100, pattern=_ID_PATTERN)
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
    by: str | None = Field(default=None, min_length=1, max_length=100,
                           description="Who acts: yourself (default); admins and machines may name a person")


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
