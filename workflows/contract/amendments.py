"""Amendments: what a proposed change needs (roles), whether it fits the contract, what it would
do (its impact) and how it changes the contract's state.

Pure functions over the workflow's state, so the validator, the impact assessment (run on a
copy) and the final application all use the same rules.  No I/O, no clock: ``now`` is passed in.
(The engine before ``lean-engine-v1`` keeps its own frozen copy: workflows/legacy/amendments.py.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from temporalio.exceptions import ApplicationError

from core.durations import DurationError, add_duration
from workflows.contract import schedule
from workflows.contract.journal import Journal
from workflows.contract.notices import notice
from workflows.contract.payments import fmt as _fmt
from workflows.contract.payments import money, recompute
from workflows.errors import conflict, invalid, not_found
from workflows.types import (
    DONE,
    IN_PROGRESS,
    MILESTONE_KINDS,
    OVERDUE,
    PAID,
    PARTIALLY_PAID,
    PENDING,
    WAIVED,
    AgreementRequest,
    AmendmentChange,
    AmendmentImpact,
    AmendmentPolicy,
    AmendmentState,
    AmendmentStatus,
    ApprovalRecord,
    ApprovalState,
    ClauseChange,
    ContractState,
    ContractStatus,
    ContractVersion,
    DecideAmendmentInput,
    DueRule,
    InstallmentState,
    InstallmentStatus,
    ItemImpact,
    MilestoneSpec,
    MilestoneState,
    RequestAmendmentInput,
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


def check(state: ContractState, changes: list[AmendmentChange], now: datetime,
          keep_order: Callable[[], bool] = lambda: True) -> None:
    """Refuse changes that contradict the contract; raises the workflow's 404/409/422 errors.
    ``keep_order`` is asked only when the changes would put a milestone before one it depends
    on: whether to refuse that (the handler asks its patch; before it, such moves were taken)."""
    if not changes:
        raise invalid("an amendment needs at least one change")
    if len(changes) > MAX_CHANGES:
        raise invalid(f"at most {MAX_CHANGES} changes per amendment")
    # Check on a scratch copy so later changes see earlier ones (add, then move, ...).
    scratch = copy.deepcopy(state)
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
    schedule.date_open_items(scratch, None)
    broken = order_broken(state, scratch)
    if broken is not None and keep_order():
        raise invalid(broken)


def _out_of_order(s: ContractState) -> list[tuple[MilestoneState, MilestoneState]]:
    """(milestone, a milestone it depends on) pairs, both open and dated, the first due before the
    second: shipping due before the production it waits for."""
    by_key = {m.key: m for m in s.milestones}
    pairs = []
    for m in s.milestones:
        if m.status in (DONE, WAIVED) or m.due_at is None:
            continue
        for key in dict.fromkeys([*m.depends_on, *([m.due.after] if m.due.after else [])]):
            dep = by_key.get(key)
            if dep is not None and dep.status not in (DONE, WAIVED) and dep.due_at is not None and m.due_at < dep.due_at:
                pairs.append((m, dep))
    return pairs


def order_broken(before: ContractState, after: ContractState) -> str | None:
    """Why the changes break the order of the milestones (one due before a milestone it depends
    on, where it was not before the changes); None if they keep it."""
    already = {(m.key, d.key) for m, d in _out_of_order(before)}
    for m, dep in _out_of_order(after):
        if (m.key, dep.key) not in already:
            return (f"milestone {m.key!r} would fall due {_day(m.due_at)}, before {dep.key!r} (due {_day(dep.due_at)}), "
                    f"which it depends on: move {dep.key!r} in the same amendment, or move {m.key!r} less")
    return None


def _day(at: datetime | None) -> str:
    return at.date().isoformat() if at is not None else "?"


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
                raise invalid(str(exc)) from None
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
        new = money(s, c.amount)
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
                planned = given.get(inst.key)
                if planned is None:
                    raise conflict(f"installment {inst.key!r} has payments ({inst.paid}); it cannot be removed")
                if money(s, planned.amount) < Decimal(inst.paid):
                    raise conflict(f"installment {inst.key!r} cannot drop below what was paid ({inst.paid})")
        for i in c.installments:
            if money(s, i.amount) <= 0:
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
        money(s, m.planned_cost)
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
            raise invalid(str(exc)) from None


def apply(s: ContractState, changes: list[AmendmentChange], now: datetime) -> list[ClauseChange]:
    """Apply checked changes to ``s`` (the live state, or a copy); returns the changed clauses."""
    places = s.spec.minor_units
    clauses: list[ClauseChange] = []
    for c in changes:  # checked (_check_one): what each kind needs is there
        if c.kind == "move_due":
            item = _item(s, c.item_type, c.key)
            if c.due_at is not None:
                new_at = c.due_at
            else:
                assert item.due_at is not None and c.shift is not None
                new_at = shifted(item.due_at, c.shift)
            clauses.append(ClauseChange(f"{c.item_type}.{c.key}.due", f"{_name(c.item_type, item)}: due date",
                                        "date", _iso(item.due_at), _iso(new_at)))
            item.due = DueRule(at=new_at)
            item.due_at = new_at
            item.due_estimated = False
        elif c.kind == "change_owner":
            m = _item(s, "milestone", c.key)
            clauses.append(ClauseChange(f"milestone.{c.key}.owner", f"{m.name}: owner", "text", m.owner, c.owner))
            m.owner = c.owner
            if c.department:
                m.department = c.department
        elif c.kind == "add_milestone":
            assert c.milestone is not None
            spec = c.milestone
            s.milestones.append(milestone_state(spec))
            clauses.append(ClauseChange(f"milestone.{spec.key}", f"{spec.name}: added", "text", None, _describe(spec)))
        elif c.kind == "remove_milestone":
            m = _item(s, "milestone", c.key)
            s.milestones = [x for x in s.milestones if x.key != c.key]
            clauses.append(ClauseChange(f"milestone.{c.key}", f"{m.name}: removed", "text", m.name, None))
        elif c.kind == "replace_milestone":
            assert c.milestone is not None
            old = _item(s, "milestone", c.key)
            new = milestone_state(c.milestone)
            new.status = old.status if old.status != OVERDUE else PENDING
            new.progress, new.progress_message = old.progress, old.progress_message
            s.milestones[s.milestones.index(old)] = new
            clauses.append(ClauseChange(f"milestone.{c.key}", f"{old.name}: replaced", "text",
                                        old.name, _describe(c.milestone)))
        elif c.kind == "change_amount":
            new_total = money(s, c.amount)
            delta = new_total - Decimal(s.spec.amount)
            clauses.append(ClauseChange("amount", "Contract amount", "money", _fmt(Decimal(s.spec.amount), places),
                                        _fmt(new_total, places)))
            s.spec.amount = _fmt(new_total, places)
            if s.installments and sum(Decimal(i.amount) for i in s.installments) + delta == new_total:
                last = _last_unpaid(s)
                if last is not None:
                    old_amount = last.amount
                    last.amount = _fmt(Decimal(last.amount) + delta, places)
                    clauses.append(ClauseChange(f"installment.{last.key}.amount", f"Installment {last.key}: amount",
                                                "money", old_amount, last.amount))
        elif c.kind == "set_installments":
            assert c.installments is not None
            plan = {i.key: i for i in s.installments}
            new_states = []
            for ispec in c.installments:
                amount = _fmt(money(s, ispec.amount), places)
                prev = plan.get(ispec.key)
                state = InstallmentState(key=ispec.key, amount=amount, due=ispec.due, paid=_fmt(Decimal(0), places))
                if prev is not None:
                    state.paid, state.paid_at = prev.paid, prev.paid_at
                    state.status = PAID if Decimal(prev.paid) >= Decimal(amount) else (
                        PARTIALLY_PAID if Decimal(prev.paid) > 0 else InstallmentStatus.PENDING)
                    if prev.amount != amount:
                        clauses.append(ClauseChange(f"installment.{ispec.key}.amount",
                                                    f"Installment {ispec.key}: amount", "money", prev.amount, amount))
                    if prev.due != ispec.due:
                        clauses.append(ClauseChange(f"installment.{ispec.key}.due", f"Installment {ispec.key}: due date",
                                                    "date", _iso(prev.due_at), _iso(ispec.due.at) or ispec.due.offset))
                else:
                    clauses.append(ClauseChange(f"installment.{ispec.key}", f"Installment {ispec.key}: added", "money",
                                                None, amount))
                new_states.append(state)
            for key, prev in plan.items():
                if key not in {i.key for i in c.installments}:
                    clauses.append(ClauseChange(f"installment.{key}", f"Installment {key}: removed", "money",
                                                prev.amount, None))
            s.installments = new_states
        elif c.kind == "extend_end":
            assert c.end_at is not None
            clauses.append(ClauseChange("end_at", "End date", "date", _iso(s.spec.end_at), _iso(c.end_at)))
            s.spec.end_at = c.end_at
            if s.past_end and c.end_at > now:
                s.past_end = False
    return clauses


def assess(state: ContractState, changes: list[AmendmentChange], approvers: dict[str, str],
           now: datetime) -> AmendmentImpact:
    """What the changes would do, computed on a copy of the state (nothing here is kept).

    Only the items the amendment touches are listed (with their old and new date, owner or
    amount and whether they turn late or on time): an impact stays small however long the
    contract is."""
    before = state
    after = copy.deepcopy(before)
    clauses = apply(after, changes, now)
    schedule.date_open_items(after, None)
    places = before.spec.minor_units

    def late(x) -> bool:
        return x.status not in (DONE, WAIVED, PAID) and not x.due_estimated and x.due_at is not None and x.due_at <= now

    def shift(o, n) -> int | None:
        if o is None or n is None or o.due_at is None or n.due_at is None:
            return None
        return int((n.due_at - o.due_at).total_seconds())

    items, on_time, overdue, people = [], [], [], {before.spec.owner, *approvers.values()}
    old_m = {m.key: m for m in before.milestones}
    new_m = {m.key: m for m in after.milestones}
    for key in [*old_m, *[k for k in new_m if k not in old_m]]:
        o, n = old_m.get(key), new_m.get(key)
        change = "added" if o is None else "removed" if n is None else "unchanged"
        if o is not None and n is not None:
            if o.owner != n.owner:
                change = "owner"
            elif o.due_at != n.due_at:
                change = "moved"
            elif o.due != n.due or o.name != n.name or o.kind != n.kind:
                change = "replaced"
        was, will = (o is not None and o.status == OVERDUE), (n is not None and late(n))
        if change != "unchanged":
            people.update(x.owner for x in (o, n) if x is not None)
        if was and not will and n is not None:
            on_time.append(f"milestone:{key}")
        if will and not was:
            overdue.append(f"milestone:{key}")
        if change == "unchanged" and was == will:
            continue
        item = n or o
        assert item is not None
        items.append(ItemImpact(
            "milestone", key, item.name, change,
            old_due_at=o.due_at if o else None, new_due_at=n.due_at if n else None, shift_seconds=shift(o, n),
            old_owner=o.owner if o else None, new_owner=n.owner if n else None,
            overdue_before=was, overdue_after=will,
        ))
    plan = []
    old_i = {i.key: i for i in before.installments}
    new_i = {i.key: i for i in after.installments}
    for key in [*old_i, *[k for k in new_i if k not in old_i]]:
        oi, ni = old_i.get(key), new_i.get(key)
        change = "added" if oi is None else "removed" if ni is None else "unchanged"
        if oi is not None and ni is not None:
            change = "amount" if oi.amount != ni.amount else "moved" if oi.due_at != ni.due_at else "unchanged"
        was, will = (oi is not None and oi.status == InstallmentStatus.OVERDUE), (ni is not None and late(ni))
        if was and not will and ni is not None:
            on_time.append(f"installment:{key}")
        if will and not was:
            overdue.append(f"installment:{key}")
        if change == "unchanged" and was == will:
            continue
        plan.append(ItemImpact(
            "installment", key, f"Installment {key}", change,
            old_due_at=oi.due_at if oi else None, new_due_at=ni.due_at if ni else None, shift_seconds=shift(oi, ni),
            old_amount=oi.amount if oi else None, new_amount=ni.amount if ni else None,
            overdue_before=was, overdue_after=will,
        ))
    new_total = Decimal(after.spec.amount)
    paid = Decimal(before.paid_total)
    return AmendmentImpact(
        items=items,
        old_amount=_fmt(Decimal(before.spec.amount), places),
        new_amount=_fmt(new_total, places),
        amount_delta=_fmt(new_total - Decimal(before.spec.amount), places),
        old_outstanding=before.outstanding,
        new_outstanding=_fmt(max(new_total - paid, Decimal(0)), places),
        old_end_at=before.spec.end_at,
        new_end_at=after.spec.end_at,
        installments=plan,
        becomes_on_time=on_time,
        becomes_overdue=overdue,
        affected_people=sorted(p for p in people if p),
        clauses=clauses,
    )


# ---------------------------------------------------------------- helpers


def shifted(at: datetime, shift: str) -> datetime:
    """``at`` moved by an ISO 8601 duration; a leading minus moves it earlier (``-P3D``)."""
    if isinstance(shift, str) and shift.startswith("-"):
        return at - (add_duration(at, shift[1:]) - at)
    return add_duration(at, shift)


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


def _last_unpaid(s: ContractState) -> InstallmentState | None:
    unpaid = [i for i in s.installments if i.status != PAID]
    return unpaid[-1] if unpaid else None


def milestone_state(m: MilestoneSpec) -> MilestoneState:
    return MilestoneState(
        key=m.key, name=m.name, kind=m.kind, owner=m.owner, department=m.department, standard=m.standard,
        due=m.due, depends_on=list(m.depends_on),
        reminders=list(m.reminders) if m.reminders is not None else None,
        planned_cost=m.planned_cost,
    )


def _describe(m: MilestoneSpec) -> str:
    when = m.due.at.isoformat() if m.due.at else f"{m.due.offset} after {m.due.after or 'the effective date'}"
    return f"{m.name} ({m.kind}), owner {m.owner} ({m.department}), due {when}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# ---------------------------------------------------------------- requests and decisions


def find(state: ContractState, amendment_id: str) -> AmendmentState | None:
    for a in state.amendments:
        if a.id == amendment_id:
            return a
    return None


def check_request(state: ContractState, r: RequestAmendmentInput, now: datetime,
                  keep_order: Callable[[], bool] = lambda: True) -> None:
    if state.status != ContractStatus.ACTIVE:
        raise conflict(f"contract is {state.status}; it can no longer be amended")
    if not r.amendment_id or len(r.amendment_id) > 40:
        raise invalid("an amendment needs an id of 1 to 40 characters")
    if not r.requested_by or not r.requested_by.strip():
        raise invalid("say who requests the amendment ('requested_by')")
    if not r.reason or not r.reason.strip():
        raise invalid("an amendment needs a written reason")
    check(state, r.changes, now, keep_order)


def request(state: ContractState, r: RequestAmendmentInput, journal: Journal) -> AmendmentState:
    """Record a checked request: its approvals become timed items (reminded and escalated like
    milestones); a change no role must approve is applied at once."""
    s, now = state, journal.now()
    roles = required_roles(s, r.changes)
    a = AmendmentState(
        id=r.amendment_id, number=len(s.amendments) + 1, requested_by=r.requested_by, reason=r.reason.strip(),
        changes=list(r.changes), requested_at=now, required_roles=roles,
        approvers={role: r.approvers.get(role) or role for role in roles},
        impact=assess(s, r.changes, r.approvers, now), based_on_version=s.contract_version,
    )
    s.amendments.append(a)
    assert a.impact is not None
    journal.emit("amendment.requested",
                 {"amendment_id": a.id, "number": a.number, "reason": a.reason, "required_roles": roles,
                  "approvers": a.approvers, "changes": [c.clause for c in a.impact.clauses]},
                 actor=r.requested_by)
    if not roles:
        apply_approved(s, a, journal)  # a policy may let some changes through without approval
        return a
    policy = policy_of(s)
    for role in roles:
        item = ApprovalState(key=f"{a.id}:{role}", amendment_id=a.id, role=role, owner=a.approvers[role],
                             department=ROLE_DEPARTMENTS.get(role, role), due_at=add_duration(now, policy.approval_within),
                             reminders=list(policy.approval_reminders))
        s.approvals.append(item)
        if s.spec.policy is not None:
            journal.notify(notice(s, "approval", "approval", item, channels=s.spec.policy.handoff_channels))
    return a


def missing_roles(a: AmendmentState) -> list[str]:
    done = {x.role for x in a.decisions if x.decision == "approved"}
    return [r for r in a.required_roles if r not in done]


def check_decision(state: ContractState, d: DecideAmendmentInput, now: datetime, *, still_current: bool = True,
                   keep_order: Callable[[], bool] = lambda: True) -> None:
    """Whether ``d`` may be taken.  ``still_current``: refuse an approval of an amendment assessed
    on an older contract version (the workflow's handler asks only where its patch is in the
    history); ``keep_order`` as in ``check``."""
    a = find(state, d.amendment_id)
    if a is None:
        raise not_found(f"contract has no amendment {d.amendment_id!r}")
    if a.status != AmendmentStatus.PENDING:
        raise conflict(f"amendment {a.id!r} is already {a.status}")
    if state.status != ContractStatus.ACTIVE:
        raise conflict(f"contract is {state.status}; it can no longer be amended")
    if d.decision not in ("approve", "reject", "withdraw"):
        raise invalid("decision must be 'approve', 'reject' or 'withdraw'")
    if not d.by or not d.by.strip():
        raise invalid("say who decides ('by')")
    if d.decision == "withdraw":
        if d.by != a.requested_by:
            raise conflict(f"only the requester ({a.requested_by}) can withdraw amendment {a.id!r}")
        return
    if d.role not in a.required_roles:
        raise invalid(
            f"amendment {a.id!r} needs approval from {', '.join(a.required_roles)}; {d.role!r} is not one of them")
    if any(x.role == d.role and x.decision == "approved" for x in a.decisions):
        raise conflict(f"{d.role} has already approved amendment {a.id!r}")
    if d.decision == "approve" and still_current:
        check_still_current(state, a)
    if d.decision == "approve" and missing_roles(a) == [d.role]:
        # The last approval applies the change: it must still fit the contract as it is now.
        try:
            check(state, a.changes, now, keep_order)
        except Exception as exc:  # noqa: BLE001 - reported as a conflict with the reason
            raise conflict(f"the contract changed since amendment {a.id!r} was requested: {exc}") from None


def check_still_current(state: ContractState, a: AmendmentState) -> None:
    """An approval is of the impact the approvers were shown.  Once another amendment has changed
    the contract, that impact no longer holds (two "shipping +10 days" would move it 20 days while
    the second one's impact and agreement said 10): the amendment can only be rejected or
    withdrawn, and requested again against the contract as it is now."""
    if a.based_on_version is not None and a.based_on_version != state.contract_version:
        raise conflict(
            f"amendment {a.id!r} was assessed on contract version {a.based_on_version}; another amendment has "
            f"since made it version {state.contract_version}, so its impact no longer holds. Reject or "
            f"withdraw it and request it again")


def decide(state: ContractState, d: DecideAmendmentInput, journal: Journal) -> AmendmentState:
    a = find(state, d.amendment_id)
    assert a is not None
    now = journal.now()
    word = {"approve": "approved", "reject": "rejected", "withdraw": "withdrawn"}[d.decision]
    a.decisions.append(ApprovalRecord(d.by, d.role, word, d.comment, now))
    if d.decision == "approve":
        _close_approvals(state, a, journal, only_role=d.role)
        journal.emit("amendment.approval", {"amendment_id": a.id, "role": d.role, "by": d.by, "comment": d.comment,
                                            "missing": missing_roles(a)}, actor=d.by)
        if not missing_roles(a):
            journal.emit("amendment.approved", {"amendment_id": a.id, "number": a.number,
                                                "approved_by": [x.by for x in a.decisions]}, actor=d.by)
            apply_approved(state, a, journal)
    else:
        a.status, a.decided_at, a.note = AmendmentStatus(word), now, d.comment
        _close_approvals(state, a, journal)
        journal.emit(f"amendment.{word}", {"amendment_id": a.id, "role": d.role, "by": d.by, "comment": d.comment},
                     actor=d.by)
    return a


def _close_approvals(state: ContractState, a: AmendmentState, journal: Journal, only_role: str | None = None) -> None:
    for item in list(state.approvals):
        if item.amendment_id == a.id and (only_role is None or item.role == only_role):
            state.approvals.remove(item)
            journal.item_resolved("approval", item.key)


def apply_approved(state: ContractState, a: AmendmentState, journal: Journal) -> None:
    """Apply an approved amendment at once: dates, owners, scope and money change together, the
    escalations of items that moved stop (and start again if still late), a new version is
    recorded and its supplementary agreement queued."""
    s, now = state, journal.now()
    watched = {}
    items: list[MilestoneState | InstallmentState] = [*s.milestones, *s.installments]
    for item in items:
        if item.status == OVERDUE:
            item_type = "milestone" if isinstance(item, MilestoneState) else "installment"
            watched[(item_type, item.key)] = (item.due_at, getattr(item, "owner", None), item)
    clauses = apply(s, a.changes, now)
    current: dict[tuple[str, str], MilestoneState | InstallmentState] = {("milestone", m.key): m for m in s.milestones}
    current.update({("installment", i.key): i for i in s.installments})
    for (item_type, key), (due_at, owner, old_item) in watched.items():
        now_item = current.get((item_type, key))
        if now_item is not None and now_item is old_item and now_item.status == OVERDUE and now_item.due_at == due_at \
                and getattr(now_item, "owner", None) == owner:
            continue  # untouched: its escalation goes on
        journal.item_resolved(item_type, key)
        if now_item is not None and now_item.status == OVERDUE:
            # Back to open; the refresh marks it overdue again if its new date has passed.
            now_item.overdue_since = None
            if isinstance(now_item, MilestoneState):
                now_item.status = IN_PROGRESS if now_item.progress > 0 else PENDING
            else:
                now_item.status = PARTIALLY_PAID if Decimal(now_item.paid) > 0 else InstallmentStatus.PENDING
    for m in s.milestones:  # removed milestones no longer hold others back
        m.depends_on = [d for d in m.depends_on if any(x.key == d for x in s.milestones)]
    recompute(s)
    s.contract_version += 1
    _tell_affected_owners(s, a, journal)
    a.status, a.decided_at, a.contract_version = AmendmentStatus.APPLIED, now, s.contract_version
    approvals = [x for x in a.decisions if x.decision == "approved"]
    if not s.versions:
        s.versions.append(ContractVersion(1, s.spec.effective_at, None, "as signed"))
    s.versions.append(ContractVersion(s.contract_version, now, a.id, a.reason, clauses, approvals))
    s.pending_documents.append(AgreementRequest(
        contract_id=s.spec.contract_id, amendment_id=a.id, amendment_number=a.number,
        contract_version=s.contract_version, contract_title=s.spec.title, customer_name=s.spec.customer_name,
        customer_external_id=s.spec.customer_external_id, contract_external_id=s.spec.external_id,
        original_effective_at=s.spec.effective_at, effective_at=now, currency=s.spec.currency,
        reason=a.reason, requested_by=a.requested_by, clauses=clauses, approvals=approvals,
    ))
    journal.emit("amendment.applied", {
        "amendment_id": a.id, "number": a.number, "contract_version": s.contract_version,
        "clauses": [{"clause": c.clause, "old": c.old, "new": c.new} for c in clauses],
        "amount": s.spec.amount, "outstanding": s.outstanding, "end_at": _iso(s.spec.end_at),
    })


def _tell_affected_owners(state: ContractState, a: AmendmentState, journal: Journal) -> None:
    """Everyone whose milestone moved, changed hands or was added hears of it at once."""
    if state.spec.policy is None:
        return
    touched = [c.key if c.kind != "add_milestone" else c.milestone.key for c in a.changes  # type: ignore[union-attr]
               if c.kind in ("move_due", "change_owner", "add_milestone", "replace_milestone")
               and (c.kind != "move_due" or c.item_type == "milestone")]
    for m in state.milestones:
        if m.key in touched and m.status not in (DONE, WAIVED):
            m.due_at, m.due_estimated = schedule.due(state, m.due, None)
            if m.due_at is not None:
                journal.notify(notice(state, "amended", "milestone", m, channels=state.spec.policy.handoff_channels,
                                      tag=f"-v{state.contract_version}"))
