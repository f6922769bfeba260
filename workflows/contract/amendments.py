"""Amendments: what a proposed change needs (roles), whether it fits the contract, and how it
changes the contract's state.

Pure functions over the workflow's state, so the validator, the impact assessment (run on a
copy) and the final application all use the same rules.  No I/O, no clock: ``now`` is passed in.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from core.durations import DurationError, add_duration
    from core.money import MoneyError, parse_amount
    from workflows.errors import conflict, invalid, not_found
    from workflows.types import (
        DONE,
        MILESTONE_KINDS,
        OVERDUE,
        PAID,
        PENDING,
        WAIVED,
        AmendmentChange,
        AmendmentPolicy,
        ClauseChange,
        ContractState,
        DueRule,
        InstallmentState,
        MilestoneSpec,
        MilestoneState,
    )

KINDS = {
    "move_due": "schedule",
    "extend_end": "schedule",
    "change_owner": "owner",
    "add_milestone": "scope",
    "remove_milestone": "scope",
    "replace_milestone": "scope",
    "change_amount": "money",
    "set_installments": "money",
}
ROLE_DEPARTMENTS = {"finance": "finance", "legal": "legal", "manager": "sales"}
MAX_CHANGES = 50


def policy_of(state: ContractState) -> AmendmentPolicy:
    return state.spec.amendments or AmendmentPolicy()


def required_roles(state: ContractState, changes: list[AmendmentChange]) -> list[str]:
    """The roles whose approval the changes need, in a stable order."""
    approvals = policy_of(state).approvals
    roles: list[str] = []
    for change in changes:
        for role in approvals.get(KINDS.get(change.kind, "scope"), []):
            if role not in roles:
                roles.append(role)
    return roles


def check(state: ContractState, changes: list[AmendmentChange], now: datetime) -> None:
    """Refuse changes that contradict the contract; raises the workflow's 404/409/422 errors."""
    if not changes:
        raise invalid("an amendment needs at least one change")
    if len(changes) > MAX_CHANGES:
        raise invalid(f"at most {MAX_CHANGES} changes per amendment")
    # Check on a scratch copy so later changes see earlier ones (add, then move, ...).
    scratch = _copy(state)
    for index, change in enumerate(changes):
        try:
            _check_one(scratch, change, now)
            apply(scratch, [change], now)
        except ApplicationError as exc:  # the same error, saying which change it is about
            raise ApplicationError(f"change {index + 1} ({change.kind}): {exc.message}", type=exc.type,
                                   non_retryable=True) from None
    total = Decimal(scratch.spec.amount)
    plan = sum((Decimal(i.amount) for i in scratch.installments), Decimal(0))
    if scratch.installments and plan != total:
        raise invalid(
            f"the installment plan adds up to {plan} but the amount would be {total}; send a plan that matches"
        )


def _check_one(s: ContractState, c: AmendmentChange, now: datetime) -> None:
    if c.kind not in KINDS:
        raise invalid(f"unknown change kind {c.kind!r}; one of {', '.join(sorted(KINDS))}")
    if c.kind == "move_due":
        item = _item(s, c.item_type, c.key)
        if _resolved(item):
            raise conflict(f"{c.item_type} {c.key!r} is already {item.status}; its date can no longer move")
        if (c.shift is None) == (c.due_at is None):
            raise invalid("move_due needs exactly one of 'shift' (ISO 8601, e.g. P10D) or 'due_at'")
        if c.due_at is not None and c.due_at.tzinfo is None:
            raise invalid("due_at must carry a timezone")
        if c.shift is not None:
            if item.due_at is None:
                raise invalid(f"{c.item_type} {c.key!r} has no date yet; give 'due_at' instead of a shift")
            try:
                shifted(item.due_at, c.shift)
            except DurationError as exc:
                raise invalid(str(exc))
    elif c.kind == "change_owner":
        m = _item(s, "milestone", c.key)
        if _resolved(m):
            raise conflict(f"milestone {c.key!r} is already {m.status}; its owner can no longer change")
        if not c.owner or not c.owner.strip():
            raise invalid("change_owner needs the new 'owner'")
        if c.owner == m.owner and (c.department is None or c.department == m.department):
            raise invalid(f"{c.owner!r} already owns milestone {c.key!r}")
    elif c.kind == "add_milestone":
        if c.milestone is None:
            raise invalid("add_milestone needs 'milestone'")
        if any(m.key == c.milestone.key for m in s.milestones):
            raise conflict(f"the contract already has a milestone {c.milestone.key!r}")
        _check_milestone_spec(s, c.milestone)
    elif c.kind == "remove_milestone":
        m = _item(s, "milestone", c.key)
        if m.status == DONE:
            raise conflict(f"milestone {c.key!r} is completed; a completed milestone cannot be removed")
        dependants = [x.key for x in s.milestones if c.key in x.depends_on or x.due.after == c.key]
        if dependants:
            raise conflict(f"milestones {', '.join(dependants)} depend on {c.key!r}; change or remove them first")
    elif c.kind == "replace_milestone":
        m = _item(s, "milestone", c.key)
        if m.status == DONE:
            raise conflict(f"milestone {c.key!r} is completed; a completed milestone cannot be replaced")
        if c.milestone is None:
            raise invalid("replace_milestone needs 'milestone'")
        if c.milestone.key != c.key:
            raise invalid("replace_milestone keeps the milestone's key; remove and add to rename")
        _check_milestone_spec(s, c.milestone, replacing=c.key)
    elif c.kind == "change_amount":
        new = _amount(s, c.amount)
        paid = Decimal(s.paid_total)
        if new < paid:
            raise conflict(f"the amount cannot drop to {new}: {paid} {s.spec.currency} has already been paid")
        if new == Decimal(s.spec.amount):
            raise invalid(f"the amount is already {s.spec.amount}")
        delta = new - Decimal(s.spec.amount)
        if s.installments:
            last = _last_unpaid(s)
            if last is None:
                raise conflict("every installment is paid; send a new plan ('set_installments') with the change")
            if Decimal(last.amount) + delta < Decimal(last.paid) or Decimal(last.amount) + delta <= 0:
                raise conflict(
                    f"installment {last.key!r} cannot absorb {delta}; send a new plan ('set_installments')"
                )
    elif c.kind == "set_installments":
        if not c.installments:
            raise invalid("set_installments needs the new plan ('installments')")
        keys = [i.key for i in c.installments]
        if len(set(keys)) != len(keys):
            raise invalid("installment keys must be unique")
        given = {i.key: i for i in c.installments}
        for inst in s.installments:
            if Decimal(inst.paid) > 0:
                new = given.get(inst.key)
                if new is None:
                    raise conflict(f"installment {inst.key!r} has payments ({inst.paid}); it cannot be removed")
                if _amount(s, new.amount) < Decimal(inst.paid):
                    raise conflict(f"installment {inst.key!r} cannot drop below what was paid ({inst.paid})")
        for i in c.installments:
            if _amount(s, i.amount) <= 0:
                raise invalid(f"installment {i.key!r} must be more than zero")
            _check_due(s, i.due)
    elif c.kind == "extend_end":
        if c.end_at is None or c.end_at.tzinfo is None:
            raise invalid("extend_end needs 'end_at' with a timezone")
        if c.end_at <= s.spec.end_at:
            raise invalid("extend_end must move the end date later; to end early, terminate the contract")


def _check_milestone_spec(s: ContractState, m: MilestoneSpec, replacing: str | None = None) -> None:
    if not m.key or not m.key.strip() or len(m.key) > 60:
        raise invalid("a milestone needs a key of 1 to 60 characters")
    if m.kind not in MILESTONE_KINDS:
        raise invalid(f"unknown milestone kind {m.kind!r}")
    if not m.owner or not m.department:
        raise invalid("a milestone needs exactly one owner and a department")
    if not m.name:
        raise invalid("a milestone needs a name")
    if m.planned_cost is not None:
        _amount(s, m.planned_cost)
    keys = {x.key for x in s.milestones}
    for dep in [*m.depends_on, *([m.due.after] if m.due.after else [])]:
        if dep not in keys or dep == (replacing or m.key):
            raise invalid(f"milestone {m.key!r} depends on unknown milestone {dep!r}")
    _check_due(s, m.due)


def _check_due(s: ContractState, rule: DueRule) -> None:
    if (rule.at is None) == (rule.offset is None):
        raise invalid("a due date needs exactly one of 'at' or 'offset'")
    if rule.at is not None and rule.at.tzinfo is None:
        raise invalid("due dates must carry a timezone")
    if rule.offset is not None:
        try:
            add_duration(s.spec.effective_at, rule.offset)
        except DurationError as exc:
            raise invalid(str(exc))


def apply(s: ContractState, changes: list[AmendmentChange], now: datetime) -> list[ClauseChange]:
    """Apply checked changes to ``s`` (the live state, or a copy); returns the changed clauses."""
    places = s.spec.minor_units
    clauses: list[ClauseChange] = []
    for c in changes:
        if c.kind == "move_due":
            item = _item(s, c.item_type, c.key)
            new_at = c.due_at if c.due_at is not None else shifted(item.due_at, c.shift)
            clauses.append(ClauseChange(f"{c.item_type}.{c.key}.due", f"{_name(c.item_type, item)}: due date",
                                        "date", _iso(item.due_at), _iso(new_at)))
            item.due = DueRule(at=new_at)
            item.due_at = new_at
            item.due_estimated = False
            _sync_spec_due(s, c.item_type, item.key, item.due)
        elif c.kind == "change_owner":
            m = _item(s, "milestone", c.key)
            clauses.append(ClauseChange(f"milestone.{c.key}.owner", f"{m.name}: owner", "text", m.owner, c.owner))
            m.owner = c.owner
            if c.department:
                m.department = c.department
            for spec in s.spec.milestones:
                if spec.key == c.key:
                    spec.owner = m.owner
                    spec.department = m.department
        elif c.kind == "add_milestone":
            m = c.milestone
            s.milestones.append(_milestone_state(m))
            s.spec.milestones.append(m)
            clauses.append(ClauseChange(f"milestone.{m.key}", f"{m.name}: added", "text", None, _describe(m)))
        elif c.kind == "remove_milestone":
            m = _item(s, "milestone", c.key)
            s.milestones = [x for x in s.milestones if x.key != c.key]
            s.spec.milestones = [x for x in s.spec.milestones if x.key != c.key]
            clauses.append(ClauseChange(f"milestone.{c.key}", f"{m.name}: removed", "text", m.name, None))
        elif c.kind == "replace_milestone":
            old = _item(s, "milestone", c.key)
            new = _milestone_state(c.milestone)
            new.status = old.status if old.status != OVERDUE else PENDING
            new.progress, new.progress_message = old.progress, old.progress_message
            s.milestones[s.milestones.index(old)] = new
            s.spec.milestones = [c.milestone if x.key == c.key else x for x in s.spec.milestones]
            clauses.append(ClauseChange(f"milestone.{c.key}", f"{old.name}: replaced", "text",
                                        old.name, _describe(c.milestone)))
        elif c.kind == "change_amount":
            new_total = _amount(s, c.amount)
            delta = new_total - Decimal(s.spec.amount)
            clauses.append(ClauseChange("amount", "Contract amount", "money", _fmt(Decimal(s.spec.amount), places),
                                        _fmt(new_total, places)))
            s.spec.amount = _fmt(new_total, places)
            if s.installments and sum(Decimal(i.amount) for i in s.installments) + delta == new_total:
                last = _last_unpaid(s)
                if last is not None:
                    old_amount = last.amount
                    last.amount = _fmt(Decimal(last.amount) + delta, places)
                    _sync_spec_installment(s, last)
                    clauses.append(ClauseChange(f"installment.{last.key}.amount", f"Installment {last.key}: amount",
                                                "money", old_amount, last.amount))
        elif c.kind == "set_installments":
            old = {i.key: i for i in s.installments}
            new_states = []
            for spec in c.installments:
                amount = _fmt(_amount(s, spec.amount), places)
                prev = old.get(spec.key)
                state = InstallmentState(key=spec.key, amount=amount, due=spec.due, paid=_fmt(Decimal(0), places))
                if prev is not None:
                    state.paid, state.paid_at = prev.paid, prev.paid_at
                    state.status = PAID if Decimal(prev.paid) >= Decimal(amount) else (
                        "partially_paid" if Decimal(prev.paid) > 0 else PENDING)
                    if prev.amount != amount:
                        clauses.append(ClauseChange(f"installment.{spec.key}.amount", f"Installment {spec.key}: amount",
                                                    "money", prev.amount, amount))
                    if prev.due != spec.due:
                        clauses.append(ClauseChange(f"installment.{spec.key}.due", f"Installment {spec.key}: due date",
                                                    "date", _iso(prev.due_at), _iso(spec.due.at) or spec.due.offset))
                else:
                    clauses.append(ClauseChange(f"installment.{spec.key}", f"Installment {spec.key}: added", "money",
                                                None, amount))
                new_states.append(state)
            for key, prev in old.items():
                if key not in {i.key for i in c.installments}:
                    clauses.append(ClauseChange(f"installment.{key}", f"Installment {key}: removed", "money",
                                                prev.amount, None))
            s.installments = new_states
            s.spec.installments = [
                type(spec)(key=spec.key, amount=_fmt(_amount(s, spec.amount), places), due=spec.due)
                for spec in c.installments
            ]
        elif c.kind == "extend_end":
            clauses.append(ClauseChange("end_at", "End date", "date", _iso(s.spec.end_at), _iso(c.end_at)))
            s.spec.end_at = c.end_at
            if s.past_end and c.end_at > now:
                s.past_end = False
    return clauses


# ---------------------------------------------------------------- helpers


def shifted(at: datetime, shift: str) -> datetime:
    """``at`` moved by an ISO 8601 duration; a leading minus moves it earlier (``-P3D``)."""
    if isinstance(shift, str) and shift.startswith("-"):
        return at - (add_duration(at, shift[1:]) - at)
    return add_duration(at, shift)


def _copy(state: ContractState) -> ContractState:
    import copy

    return copy.deepcopy(state)


def _item(s: ContractState, item_type: str, key: str | None):
    if item_type not in ("milestone", "installment"):
        raise invalid("item_type must be 'milestone' or 'installment'")
    items = s.milestones if item_type == "milestone" else s.installments
    for item in items:
        if item.key == key:
            return item
    raise not_found(f"contract has no {item_type} {key!r}")


def _resolved(item) -> bool:
    return item.status in (DONE, WAIVED, PAID)


def _name(item_type: str, item) -> str:
    return item.name if item_type == "milestone" else f"Installment {item.key}"


def _sync_spec_due(s: ContractState, item_type: str, key: str, due: DueRule) -> None:
    specs = s.spec.milestones if item_type == "milestone" else s.spec.installments
    for spec in specs:
        if spec.key == key:
            spec.due = due


def _sync_spec_installment(s: ContractState, inst: InstallmentState) -> None:
    for spec in s.spec.installments:
        if spec.key == inst.key:
            spec.amount = inst.amount


def _last_unpaid(s: ContractState) -> InstallmentState | None:
    unpaid = [i for i in s.installments if i.status != PAID]
    return unpaid[-1] if unpaid else None


def _milestone_state(m: MilestoneSpec) -> MilestoneState:
    return MilestoneState(
        key=m.key, name=m.name, kind=m.kind, owner=m.owner, department=m.department, standard=m.standard,
        due=m.due, depends_on=list(m.depends_on),
        reminders=list(m.reminders) if m.reminders is not None else None,
        planned_cost=m.planned_cost,
    )


def _describe(m: MilestoneSpec) -> str:
    when = m.due.at.isoformat() if m.due.at else f"{m.due.offset} after {m.due.after or 'the effective date'}"
    return f"{m.name} ({m.kind}), owner {m.owner} ({m.department}), due {when}"


def _amount(s: ContractState, value: str | None) -> Decimal:
    if value is None:
        raise invalid("an amount is required")
    try:
        return parse_amount(value, s.spec.currency)
    except MoneyError as exc:
        raise invalid(str(exc))


def _fmt(amount: Decimal, places: int) -> str:
    return str(amount.quantize(Decimal(1).scaleb(-places)))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
