"""payments: checks, idempotency on the reference, oldest-first allocation, credit, exact money."""

from __future__ import annotations

from decimal import Decimal

import pytest
from temporalio.exceptions import ApplicationError

from tests.engine.conftest import NOW
from workflows.contract import payments
from workflows.types import InstallmentStatus, PaymentInput

INSTALMENTS = [{"key": "a", "due_after": "P10D", "amount": "100.00"},
               {"key": "b", "due_after": "P5D", "amount": "50.00"}]


def pay(c, ref, amount, currency="CNY"):
    p = PaymentInput(ref, amount, currency, NOW)
    payments.check(c.state, p)
    return payments.apply(c.state, p, c.journal)


def test_allocated_to_the_oldest_due_date_first_and_the_rest_held_as_credit(contract):
    c = contract(amount="150.00", installments=INSTALMENTS)
    r = pay(c, "BANK-1", "70.00")
    assert r.allocations == {"b": "50.00", "a": "20.00"}  # b falls due first
    assert c.installment("b").status == InstallmentStatus.PAID
    assert c.installment("a").status == InstallmentStatus.PARTIALLY_PAID and c.installment("a").paid == "20.00"
    assert c.state.outstanding == "80.00"
    r = pay(c, "BANK-2", "100.01")
    assert c.state.outstanding == "0.00" and c.state.credit == "20.01" and r.applied
    assert c.event_types() == ["installment.paid", "payment.received", "installment.paid", "payment.received",
                               "payment.overpaid"]
    assert payments.settled(c.state) and payments.settled_at(c.state) == NOW
    assert sum(Decimal(i.paid) for i in c.state.installments) == Decimal("150.00")


def test_the_same_reference_again_changes_nothing_and_another_amount_is_refused(contract):
    c = contract(amount="150.00", installments=INSTALMENTS)
    pay(c, "BANK-1", "10.00")
    again = pay(c, "BANK-1", "10.00")
    assert not again.applied and c.state.paid_total == "10.00" and len(c.state.payments) == 1
    with pytest.raises(ApplicationError, match="already recorded") as exc:
        pay(c, "BANK-1", "11.00")
    assert exc.value.type == "Conflict"


@pytest.mark.parametrize("amount, currency, message", [
    ("10.001", "CNY", "more decimals"), ("-1", "CNY", "greater than zero"), ("10", "USD", "is in USD"),
    ("1e400", "CNY", "largest amount"), ("abc", "CNY", "not a decimal"),
])
def test_bad_payments_are_refused_before_they_change_anything(contract, amount, currency, message):
    c = contract(amount="150.00", installments=INSTALMENTS)
    with pytest.raises(ApplicationError, match=message):
        payments.check(c.state, PaymentInput("BANK-9", amount, currency, NOW))
    assert c.state.payments == [] and c.journal.events == []


def test_a_date_years_before_the_contract_took_effect_is_refused_where_the_patch_says(contract):
    """Over a year before the contract's effective date is a mistyped year; a deposit months
    before is money.  Handlers of older runs (no patch) applied such payments and still do on
    replay; a reference already recorded is answered as recorded, whatever its date."""
    from datetime import timedelta

    c = contract(amount="150.00", installments=INSTALMENTS)
    effective = c.state.spec.effective_at
    typo = PaymentInput("TYPO-1", "1.00", "CNY", effective - timedelta(days=367))
    with pytest.raises(ApplicationError, match="more than a year before the contract took effect"):
        payments.check(c.state, typo)
    payments.check(c.state, typo, lambda: False)  # an older run's handler
    payments.check(c.state, PaymentInput("DEPOSIT-1", "1.00", "CNY", effective - timedelta(days=300)))
    payments.apply(c.state, typo, c.journal)  # as an older run recorded it
    payments.check(c.state, typo)  # the same payment again: answered as recorded, not refused
