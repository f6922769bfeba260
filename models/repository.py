"""Writing a new contract row: shared by the API (at creation) and the projection (a workflow
that somehow has no row gets one), so both build it the same way."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.serde import to_jsonable
from models.contract import Contract, Customer
from workflows.types import ContractSpec


def customer_for(session: Session, spec: ContractSpec, now: datetime) -> Customer:
    """The customer with the spec's CRM id, created on first sight."""
    customer = None
    if spec.customer_external_id:
        customer = session.execute(
            select(Customer).where(Customer.external_id == spec.customer_external_id)
        ).scalar_one_or_none()
    if customer is None:
        customer = Customer(name=spec.customer_name, external_id=spec.customer_external_id, created_at=now)
        session.add(customer)
        session.flush()
    return customer


def new_contract_row(session: Session, spec: ContractSpec, *, workflow_id: str, status: str, version: int,
                     now: datetime) -> Contract:
    amount = Decimal(spec.amount)
    contract = Contract(
        id=spec.contract_id,
        external_id=spec.external_id,
        erp_order_no=spec.erp_order_no,
        workflow_id=workflow_id,
        title=spec.title,
        customer_id=customer_for(session, spec, now).id,
        customer_name=spec.customer_name,
        currency=spec.currency,
        amount=amount,
        paid_total=Decimal(0),
        outstanding=amount,
        credit=Decimal(0),
        effective_at=spec.effective_at,
        end_at=spec.end_at,
        owner=spec.owner,
        playbook=spec.playbook,
        status=status,
        overdue_count=0,
        version=version,
        spec=to_jsonable(spec),
        created_at=now,
        updated_at=now,
    )
    session.add(contract)
    return contract
