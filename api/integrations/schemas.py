"""Bodies of the incoming integrations: finance (bank statements) and ERP (delivery progress).

Public, like api/contracts/schemas.py: add optional fields, never rename one.  A batch is validated as an
envelope (shape, types, sizes: 422 for the whole batch, nothing applied); everything that depends
on a contract's state is judged line by line and reported in the line's result.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.platform.fields import AnyDateTimeIn, IntIn, LineAmount, Strict

MAX_BATCH_LINES = 5000

Outcome = Literal["applied", "duplicate", "unmatched", "rejected"]
OUTCOMES: tuple[str, ...] = ("applied", "duplicate", "unmatched", "rejected")


class Totals(BaseModel):
    lines: int = 0
    applied: int = 0
    duplicate: int = 0
    unmatched: int = 0
    rejected: int = 0


# ---------------------------------------------------------------- finance: bank statement lines
class BankLineIn(Strict):
    line_id: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^\S(.*\S)?$",
        description="The bank's unique id of this statement line (transaction id). The payment is recorded "
        "under the reference 'bank:<line_id>', so the same line posted again is never applied twice.",
    )
    amount: LineAmount = Field(description="Decimal string in the line's currency, e.g. '1234.50'; a line whose "
                               "amount is not a plain decimal is rejected on its own")
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217; must be the contract's currency")
    received_at: AnyDateTimeIn = Field(
        description="Value date-time of the credit, with a zone; outside years 1970 to 2200 the line is rejected")
    reference: str | None = Field(
        default=None, max_length=500, description="The bank's free-text reference / remittance information"
    )
    contract_id: str | None = Field(default=None, min_length=1, max_length=40, description="Explicit contract id")
    contract_number: str | None = Field(
        default=None, min_length=1, max_length=100, description="The contract number (the contract's external_id)"
    )
    payer: str | None = Field(default=None, max_length=300, description="Payer name as printed on the statement")


class FinancePaymentsIn(Strict):
    statement_id: str | None = Field(default=None, max_length=100, description="The statement this batch comes from")
    lines: list[BankLineIn] = Field(
        min_length=1, description=f"Statement lines in statement order; at most {MAX_BATCH_LINES} (more: 413)"
    )


class BankLineResult(BaseModel):
    line_id: str
    index: int = Field(description="Position of the line in the request (0-based)")
    outcome: Outcome
    contract_id: str | None = None
    matched_by: Literal["contract_id", "contract_number", "reference"] | None = None
    reason: str | None = None
    outstanding: str | None = Field(default=None, description="The contract's balance after this line")
    credit: str | None = None
    allocations: dict[str, str] | None = None
    retryable: bool = Field(default=False, description="A transient failure: posting the line again is safe")


class FinancePaymentsOut(BaseModel):
    statement_id: str | None = None
    totals: Totals
    lines: list[BankLineResult]


# ---------------------------------------------------------------- ERP: delivery progress
class ErpProgressLineIn(Strict):
    erp_order_no: str = Field(min_length=1, max_length=60, description="The ERP's order number (contract erp_order_no)")
    milestone: str = Field(min_length=1, max_length=60, description="Milestone key, e.g. shipping")
    percent: IntIn = Field(description="0 to 100 (outside that range the line is rejected)")
    message: str = Field(default="", max_length=2000)
    complete: bool = Field(default=False, description="Complete the milestone (by 'erp'); percent is then 100")
    event_id: str | None = Field(default=None, max_length=120, description="The ERP's event id, echoed back")


class ErpProgressIn(Strict):
    lines: list[ErpProgressLineIn] = Field(
        min_length=1, description=f"Progress lines in the ERP's order; at most {MAX_BATCH_LINES} (more: 413)"
    )


class ErpLineResult(BaseModel):
    index: int
    erp_order_no: str
    milestone: str
    event_id: str | None = None
    outcome: Outcome
    contract_id: str | None = None
    reason: str | None = None
    milestone_status: str | None = None
    contract_status: str | None = None
    retryable: bool = False


class ErpProgressOut(BaseModel):
    totals: Totals
    lines: list[ErpLineResult]
