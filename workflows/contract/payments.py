"""Payments: checked against the contract, idempotent on the bank reference, allocated to
installments oldest due date first; money beyond the amount is held as the customer's credit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from core.money import MoneyError, parse_amount
from workflows.contract.journal import Journal
from workflows.errors import conflict, invalid
from workflows.types import (
    ContractState,
    ContractStatus,
    InstallmentState,
    InstallmentStatus,
    PaymentInput,
    PaymentRecord,
    PaymentResult,
)

MAX_PAYMENTS_PER_BATCH = 200
# Money may come before a contract takes effect (a deposit, an advance), but not this long before:
# a date years earlier is a typing error (2016 for 2026) that would otherwise stand in the ledger.
EARLIEST_BEFORE_EFFECT = timedelta(days=366)


def fmt(amount: Decimal, places: int) -> str:
    return str(amount.quantize(Decimal(1).scaleb(-places)))


def money(state: ContractState, value: str | None) -> Decimal:
    """An amount in the contract's currency, or the workflow's 422."""
    if value is None:
        raise invalid("an amount is required")
    try:
        return parse_amount(value, state.spec.currency)
    except MoneyError as exc:
        raise invalid(str(exc)) from None


def find(state: ContractState, reference: str) -> PaymentRecord | None:
    for rec in state.payments:
        if rec.reference == reference:
            return rec
    return None


def received_too_early(state: ContractState, received_at: datetime) -> str | None:
    """Why ``received_at`` cannot be this contract's money (over a year before it took effect), or None."""
    effective = state.spec.effective_at
    if received_at < effective - EARLIEST_BEFORE_EFFECT:
        return (f"received_at {received_at.date().isoformat()} is more than a year before the contract took effect "
                f"({effective.date().isoformat()}): check the date")
    return None


def check(state: ContractState, p: PaymentInput, dates_bounded: Callable[[], bool] = lambda: True) -> None:
    """Refuse what cannot be recorded (422/409).  ``dates_bounded``: whether a date too early is
    refused; validators always, handlers only where the workflow's patch says so (older runs
    accepted such payments, and their replay must too)."""
    if state.status != ContractStatus.ACTIVE:
        raise conflict(f"contract is {state.status}; payments can no longer be recorded")
    if not p.reference or not p.reference.strip():
        raise invalid("a payment needs a reference (bank transaction or receipt number)")
    if p.currency != state.spec.currency:
        raise invalid(f"payment is in {p.currency} but the contract is in {state.spec.currency}")
    amount = money(state, p.amount)
    if p.received_at.tzinfo is None:
        raise invalid("received_at must carry a timezone")
    previous = find(state, p.reference)
    if previous is not None and Decimal(previous.amount) != amount:
        raise conflict(
            f"reference {p.reference!r} was already recorded for {previous.amount} {previous.currency}; "
            f"a different amount under the same reference is refused"
        )
    if previous is None:  # (one already recorded is answered as recorded, whatever its date)
        why = received_too_early(state, p.received_at)
        if why and dates_bounded():
            raise invalid(why)


def apply(state: ContractState, p: PaymentInput, journal: Journal) -> PaymentResult:
    """Apply a checked payment.  The same reference again changes nothing."""
    s = state
    if find(s, p.reference) is not None:
        return PaymentResult(False, s.outstanding, s.credit, p.reference)
    amount = money(s, p.amount)
    remaining = amount
    allocations: dict[str, str] = {}
    order = {inst.key: index for index, inst in enumerate(s.installments)}
    open_ = [i for i in s.installments if i.status != InstallmentStatus.PAID]
    for inst in sorted(open_, key=lambda i: (i.due_at or s.spec.end_at, order[i.key])):
        if remaining <= 0:
            break
        take = min(Decimal(inst.amount) - Decimal(inst.paid), remaining)
        inst.paid = str(Decimal(inst.paid) + take)
        remaining -= take
        allocations[inst.key] = str(take)
        if Decimal(inst.paid) >= Decimal(inst.amount):
            inst.status = InstallmentStatus.PAID
            inst.paid_at = p.received_at
            journal.emit("installment.paid", {"key": inst.key, "amount": inst.amount})
            journal.item_resolved("installment", inst.key)
        elif inst.status != InstallmentStatus.OVERDUE:
            inst.status = InstallmentStatus.PARTIALLY_PAID
    s.payments.append(PaymentRecord(p.reference, str(amount), p.currency, p.received_at, journal.now(), p.by,
                                    allocations, str(remaining)))
    recompute(s)
    journal.emit(
        "payment.received",
        {"reference": p.reference, "amount": str(amount), "currency": p.currency,
         "received_at": p.received_at.isoformat(), "allocations": allocations, "outstanding": s.outstanding},
        actor=p.by,
    )
    if remaining > 0:
        journal.emit("payment.overpaid", {"reference": p.reference, "excess": str(remaining), "credit": s.credit})
    return PaymentResult(True, s.outstanding, s.credit, p.reference, allocations)


def recompute(state: ContractState) -> None:
    """Paid total, balance and credit from the payments (an amendment may change the amount)."""
    places = state.spec.minor_units
    total = Decimal(state.spec.amount)
    paid = sum((Decimal(p.amount) for p in state.payments), Decimal(0))
    state.paid_total = fmt(paid, places)
    state.outstanding = fmt(max(total - paid, Decimal(0)), places)
    state.credit = fmt(max(paid - total, Decimal(0)), places)
    for inst in state.installments:
        inst.paid = fmt(Decimal(inst.paid), places)


def settled(state: ContractState) -> bool:
    return Decimal(state.outstanding) == 0


def settled_at(state: ContractState) -> datetime | None:
    """When the contract was paid in full (analytics): the ``received_at`` of the payment that
    brought the running total, in ``received_at`` order, to the amount."""
    total, amount = Decimal(0), Decimal(state.spec.amount)
    if amount <= 0 or Decimal(state.paid_total) < amount:
        return None  # not paid in full (yet)
    for p in sorted(state.payments, key=lambda p: (p.received_at, p.reference)):
        total += Decimal(p.amount)
        if amount > 0 and total >= amount:
            return p.received_at
    return None


def owed(state: ContractState, inst: InstallmentState) -> str:
    return fmt(Decimal(inst.amount) - Decimal(inst.paid), state.spec.minor_units)
