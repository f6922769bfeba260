"""The contract repository and read model.

The workflow is the source of truth for a live contract; these tables are its projection
(written by the ``project_contract`` activity) plus what the API writes at creation.  Lists,
filters and reports read here so they never query every workflow.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Boolean, Computed, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import FunctionElement

from models.base import Base
from models.types import Money, UTCDateTime


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    external_id: Mapped[str | None] = mapped_column(String(100), unique=True)  # the CRM's id
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Contract(Base):
    __tablename__ = "contracts"
    __table_args__ = (
        Index("ix_contracts_status_owner", "status", "owner"),
        Index("ix_contracts_overdue", "overdue_count"),
        # analytics (migration 0007): PostgreSQL INCLUDEs the columns read, for index-only scans
        Index("ix_contracts_effective_at", "effective_at",
              postgresql_include=["currency", "amount", "playbook", "owner"]),
        Index("ix_contracts_settled_at", "settled_at",
              postgresql_include=["effective_at", "playbook", "owner", "customer_id", "customer_name"]),
        Index("ix_contracts_id_analytics", "id",
              postgresql_include=["currency", "playbook", "owner", "customer_id", "customer_name", "closed_at"]),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(100), unique=True)  # the caller's idempotency key
    workflow_id: Mapped[str] = mapped_column(String(100), unique=True)
    erp_order_no: Mapped[str | None] = mapped_column(String(60), index=True)  # ERP progress batches match on it
    title: Mapped[str] = mapped_column(String(300))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    customer_name: Mapped[str] = mapped_column(String(200), index=True)  # denormalised for lists
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal] = mapped_column(Money())
    paid_total: Mapped[Decimal] = mapped_column(Money())
    outstanding: Mapped[Decimal] = mapped_column(Money())
    credit: Mapped[Decimal] = mapped_column(Money())
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime())
    end_at: Mapped[datetime] = mapped_column(UTCDateTime())
    owner: Mapped[str] = mapped_column(String(100), index=True)
    playbook: Mapped[str | None] = mapped_column(String(50))
    # starting (row written, workflow not yet confirmed), active, completed, terminated, expired
    status: Mapped[str] = mapped_column(String(20), index=True)
    overdue_count: Mapped[int] = mapped_column(Integer, default=0)
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=0)  # last event seq projected
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the expanded ContractSpec, to (re)start the workflow
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    close_reason: Mapped[str | None] = mapped_column(Text)
    # When the contract was paid in full: the received_at of the payment that brought the running
    # total (in received_at order) to the amount; kept by the projection, read by analytics.
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    customer: Mapped[Customer] = relationship()
    milestones: Mapped[list[Milestone]] = relationship(
        back_populates="contract", order_by="Milestone.position", cascade="all, delete-orphan"
    )
    installments: Mapped[list[Installment]] = relationship(
        back_populates="contract", order_by="Installment.position", cascade="all, delete-orphan"
    )
    payments: Mapped[list[Payment]] = relationship(
        back_populates="contract", order_by="Payment.recorded_at", cascade="all, delete-orphan"
    )


class StageDays(FunctionElement):
    """A completed milestone's stage time in days: completed_at - started_at (or 0 without a
    start), 0 if negative; NULL while not completed.  The ``milestones.stage_days`` generated
    column (migration 0010): analytics read it rather than computing it for every row."""

    type = Float()
    inherit_cache = True


@compiles(StageDays, "postgresql")
def _stage_days_pg(element, compiler, **kw):
    return ("CASE WHEN completed_at IS NOT NULL THEN date_part('epoch', greatest(completed_at - "
            "coalesce(started_at, completed_at), interval '0')) / 86400.0 END")


@compiles(StageDays)
def _stage_days_default(element, compiler, **kw):
    return ("CASE WHEN completed_at IS NOT NULL THEN max(julianday(completed_at) - "
            "julianday(coalesce(started_at, completed_at)), 0.0) END")


class Milestone(Base):
    __tablename__ = "milestones"
    __table_args__ = (
        Index("ix_milestones_status_due", "status", "due_at"),
        # analytics (migrations 0007, 0010)
        Index("ix_milestones_completed_at", "completed_at",
              postgresql_include=["kind", "status", "started_at", "due_at", "owner", "department", "contract_id",
                                  "planned_cost", "actual_cost", "satisfaction", "currency"]),
        Index("ix_milestones_kind_completed_at", "kind", "completed_at",
              postgresql_include=["status", "stage_days", "due_at", "owner", "department", "contract_id",
                                  "satisfaction"]),
        # Due per stage (migration 0010; replaces 0007's ix_milestones_due_at): one range per stage.
        Index("ix_milestones_kind_due_at", "kind", "due_at",
              postgresql_include=["status", "completed_at", "owner", "department", "contract_id"]),
        # Open milestones by due date (few): the late ones are found without reading the completed.
        Index("ix_milestones_open_due", "due_at",
              postgresql_include=["kind", "status", "owner", "department", "contract_id"],
              postgresql_where=text("completed_at IS NULL"), sqlite_where=text("completed_at IS NULL")),
    )

    contract_id: Mapped[str] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(60), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(30))
    owner: Mapped[str] = mapped_column(String(100), index=True)  # exactly one owner
    department: Mapped[str] = mapped_column(String(60))
    standard: Mapped[str] = mapped_column(Text, default="")  # execution standard / checklist
    due_rule: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"at"} or {"offset", "after"}
    depends_on: Mapped[list[str]] = mapped_column(JSON)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    due_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(20))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_by: Mapped[str | None] = mapped_column(String(100))
    overdue_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # For analytics: cost overrun (planned vs actual) and the customer's score at acceptance.
    planned_cost: Mapped[Decimal | None] = mapped_column(Money())
    actual_cost: Mapped[Decimal | None] = mapped_column(Money())
    satisfaction: Mapped[int | None] = mapped_column(Integer)
    # The contract's currency (fixed at creation), copied so the cost analytics group by it
    # without joining contracts (migration 0012).
    currency: Mapped[str] = mapped_column(String(3))
    # When the stage started: the latest completion of an earlier milestone (by position), else
    # the contract's effective date; kept by the projection, read by the stage-time analytics.
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # completed_at - started_at in days (StageDays), computed by the database (migration 0010).
    stage_days: Mapped[float | None] = mapped_column(Float, Computed(StageDays(), persisted=True))

    contract: Mapped[Contract] = relationship(back_populates="milestones")


class Installment(Base):
    __tablename__ = "installments"
    __table_args__ = (  # analytics (migrations 0007, 0012)
        Index("ix_installments_due_at", "due_at",
              postgresql_include=["contract_id", "amount", "paid", "paid_at", "currency"]),
        Index("ix_installments_paid_at", "paid_at",
              postgresql_include=["contract_id", "amount", "paid", "due_at", "currency"]),
    )

    contract_id: Mapped[str] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(60), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    amount: Mapped[Decimal] = mapped_column(Money())
    paid: Mapped[Decimal] = mapped_column(Money())
    # The contract's currency (fixed at creation), copied so the money analytics group by it
    # without joining contracts (migration 0012).
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20))
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    due_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    contract: Mapped[Contract] = relationship(back_populates="installments")


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (  # analytics (migration 0007)
        Index("ix_payments_received_at", "received_at", postgresql_include=["contract_id"]),
        Index("ix_payments_contract_received", "contract_id", "received_at", postgresql_include=["reference", "amount"]),
    )

    contract_id: Mapped[str] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"), primary_key=True)
    reference: Mapped[str] = mapped_column(String(120), primary_key=True)  # unique per contract: no double count
    amount: Mapped[Decimal] = mapped_column(Money())
    currency: Mapped[str] = mapped_column(String(3))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_by: Mapped[str] = mapped_column(String(100))
    allocations: Mapped[dict[str, str]] = mapped_column(JSON)
    excess: Mapped[Decimal] = mapped_column(Money())

    contract: Mapped[Contract] = relationship(back_populates="payments")


class ContractEvent(Base):
    """Append-only event log.  ``(contract_id, seq)`` is unique, which makes projection idempotent.

    ``seq`` is the workflow's event number.  Events recorded outside the workflow (a reminder the
    notification outbox sent: migration 0013) have no ``seq`` but a unique ``key`` instead."""

    __tablename__ = "contract_events"
    __table_args__ = (UniqueConstraint("contract_id", "seq", name="uq_contract_events_contract_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    contract_id: Mapped[str] = mapped_column(String(40), index=True)
    seq: Mapped[int | None] = mapped_column(Integer)
    key: Mapped[str | None] = mapped_column(String(300), unique=True)
    type: Mapped[str] = mapped_column(String(60), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(100))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
