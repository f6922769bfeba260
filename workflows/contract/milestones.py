"""Milestones: completed, waived or progressed by their owner, each check giving the workflow's
404/409/422; a completion hands the next milestone to its owner."""

from __future__ import annotations

from workflows.contract import schedule
from workflows.contract.journal import Journal
from workflows.contract.notices import notice, policy
from workflows.contract.payments import fmt, money, settled
from workflows.errors import conflict, invalid, not_found
from workflows.types import (
    CompleteMilestoneInput,
    ContractState,
    ContractStatus,
    MilestoneState,
    MilestoneStatus,
    OperationResult,
    ProgressInput,
    WaiveMilestoneInput,
)

RESOLVED = schedule.RESOLVED_MILESTONE


def get(state: ContractState, key: str) -> MilestoneState:
    m = schedule.milestone(state, key)
    if m is None:
        raise not_found(f"contract has no milestone {key!r}")
    return m


def check_open(state: ContractState, key: str) -> MilestoneState:
    if state.status != ContractStatus.ACTIVE:
        raise conflict(f"contract is {state.status}; its milestones can no longer change")
    m = get(state, key)
    if m.status in RESOLVED:
        raise conflict(f"milestone {key!r} is already {m.status}")
    return m


def check_complete(state: ContractState, c: CompleteMilestoneInput) -> None:
    m = check_open(state, c.key)
    if not c.by or not c.by.strip():
        raise invalid("say who completes the milestone ('by')")
    if c.actual_cost is not None:
        money(state, c.actual_cost)
    if c.satisfaction is not None:
        if not isinstance(c.satisfaction, int) or isinstance(c.satisfaction, bool) or not 1 <= c.satisfaction <= 5:
            raise invalid("satisfaction is a whole score from 1 to 5")
        if m.kind != "customer_acceptance":
            raise invalid("the customer's satisfaction is captured at customer acceptance")
    open_deps = [d for d in m.depends_on if get(state, d).status not in RESOLVED]
    if open_deps:
        raise invalid(f"milestone {c.key!r} depends on {', '.join(repr(d) for d in open_deps)}, still open; "
                      f"complete or waive it first")


def complete(state: ContractState, c: CompleteMilestoneInput, journal: Journal) -> OperationResult:
    m = get(state, c.key)
    if c.actual_cost is not None:
        m.actual_cost = fmt(money(state, c.actual_cost), state.spec.minor_units)
    m.satisfaction = c.satisfaction
    resolve(state, m, MilestoneStatus.DONE, c.by, c.note, journal)
    return OperationResult(state.status, m.status, state.version)


def check_progress(state: ContractState, p: ProgressInput) -> None:
    check_open(state, p.key)
    if not isinstance(p.percent, int) or isinstance(p.percent, bool) or not 0 <= p.percent <= 100:
        raise invalid(f"percent must be a whole number from 0 to 100, got {p.percent}")


def report_progress(state: ContractState, p: ProgressInput, journal: Journal) -> OperationResult:
    m = get(state, p.key)
    if m.progress == p.percent and m.progress_message == p.message:
        # The same report again (an ERP batch redelivered): no second event.
        return OperationResult(state.status, m.status, state.version, changed=False)
    m.progress, m.progress_message = p.percent, p.message
    if m.status == MilestoneStatus.PENDING and p.percent > 0:
        m.status = MilestoneStatus.IN_PROGRESS
    journal.emit("milestone.progress", {"key": m.key, "percent": p.percent, "message": p.message, "source": p.source},
                 actor=p.source or "system")
    return OperationResult(state.status, m.status, state.version)


def check_waive(state: ContractState, w: WaiveMilestoneInput) -> None:
    check_open(state, w.key)
    if not w.reason or not w.reason.strip():
        raise invalid("waiving a milestone needs a written reason")
    if not w.by or not w.by.strip():
        raise invalid("say who waives the milestone ('by')")


def waive(state: ContractState, w: WaiveMilestoneInput, journal: Journal) -> OperationResult:
    m = get(state, w.key)
    resolve(state, m, MilestoneStatus.WAIVED, w.by, w.reason, journal)
    return OperationResult(state.status, m.status, state.version)


def resolve(state: ContractState, m: MilestoneState, status: MilestoneStatus, by: str, note: str,
            journal: Journal) -> None:
    was_overdue = m.status == MilestoneStatus.OVERDUE
    m.status = status
    m.completed_at = journal.now()
    m.completed_by = by
    m.note = note
    if status == MilestoneStatus.DONE:
        m.progress = 100
    journal.emit("milestone.completed" if status == MilestoneStatus.DONE else "milestone.waived",
                 {"key": m.key, "note": note, "late": was_overdue, "due_at": m.due_at.isoformat() if m.due_at else None},
                 actor=by)
    journal.item_resolved("milestone", m.key)
    if status == MilestoneStatus.DONE:
        hand_off(state, m, journal)


def collect_if_settled(state: ContractState, journal: Journal) -> None:
    """A payment-collection milestone completes itself once nothing is outstanding."""
    if not settled(state):
        return
    for m in state.milestones:
        if m.kind == "payment_collection" and m.status not in RESOLVED:
            resolve(state, m, MilestoneStatus.DONE, "system", "all installments paid", journal)


def hand_off(state: ContractState, done: MilestoneState, journal: Journal) -> None:
    """The next milestone's owner gets a task and a notification the moment its turn comes."""
    if state.spec.policy is None:
        return
    for nxt in state.milestones:
        if nxt.status in RESOLVED or done.key not in nxt.depends_on:
            continue
        if any(get(state, d).status not in RESOLVED for d in nxt.depends_on):
            continue  # still waiting on another predecessor
        nxt.due_at, nxt.due_estimated = schedule.due(state, nxt.due, None)
        journal.notify(notice(state, "handoff", "milestone", nxt, channels=policy(state).handoff_channels))
        # The hand-off already tells the new owner the date: reminders whose time has passed are
        # not sent on top of it.
        nxt.reminders_from = journal.now()
