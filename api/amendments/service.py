"""Amendments and versions: what the amendment routes call.

The workflow decides (its update validators refuse a change that contradicts the contract);
this layer turns the request into the workflow's terms and answers who may approve: it
resolves each required role to a person (the owner's manager, finance's and legal's default
assignees) and checks that whoever approves holds the role they approve for.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.amendments import schemas as s
from api.contracts.builder import SpecError, due_rule, parse_contract_date
from api.contracts.schemas import InstallmentIn, MilestoneIn
from api.contracts.service import ContractService
from api.platform.problems import Problem
from core import org
from core.durations import DurationError, check_duration
from models import AmendmentRecord
from workflows.contract import ContractWorkflow
from workflows.contract import amendments as rules
from workflows.types import (
    AmendmentChange,
    AmendmentImpact,
    AmendmentResult,
    AmendmentState,
    ContractState,
    DecideAmendmentInput,
    InstallmentSpec,
    MilestoneSpec,
    RequestAmendmentInput,
)


def _fields(item: Any) -> dict[str, Any]:
    """A dataclass's fields, one level deep (the workflow's types have ``__slots__``: no ``vars()``)."""
    return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}


class AmendmentService:
    def __init__(self, contracts: ContractService) -> None:
        self.contracts = contracts
        self.sessions = contracts.sessions

    # ------------------------------------------------------------------ request
    async def request(self, contract_id: str, body: s.AmendmentRequestIn) -> s.AmendmentAccepted:
        changes = [_change(c, f"changes[{i}]") for i, c in enumerate(body.changes)]
        state = await self._state(contract_id)
        changes = [_end_date(change, c.end_date, _zone(state, self.contracts.settings), f"changes[{i}].end_date")
                   for i, (change, c) in enumerate(zip(changes, body.changes, strict=True))]
        roles = rules.required_roles(state, changes)
        _check_moves(state, changes)
        def people() -> dict[str, str]:
            with self.sessions() as session:
                _check_people(session, changes)
                return {role: _approver_for(session, role, state) for role in roles}

        approvers = await self.contracts.in_db(people)
        result: AmendmentResult = await self.contracts.send_update(
            contract_id,
            ContractWorkflow.request_amendment,
            RequestAmendmentInput(uuid.uuid4().hex[:12], body.requested_by or "", body.reason, changes, approvers),
        )
        return _accepted(result)

    # ------------------------------------------------------------------ decide
    async def decide(self, contract_id: str, amendment_id: str, decision: str, body) -> s.AmendmentAccepted:
        state = await self._state(contract_id)
        a = _find(state, amendment_id)
        role = getattr(body, "role", None) or ""
        if decision == "withdraw" and a.status == "pending" and body.by != a.requested_by:
            # Who may withdraw is a permission (403), not a state of the amendment (409).
            raise Problem(403, f"only the requester ({a.requested_by}) can withdraw amendment {a.id!r}",
                          slug="not-the-requester")
        if decision != "withdraw":
            if not role:
                if len(a.required_roles) == 1:
                    role = a.required_roles[0]
                else:
                    raise Problem(422, f"say which role you {decision} for ('role'): one of "
                                       f"{', '.join(a.required_roles)}", slug="invalid")
            if role in a.required_roles:
                def eligible() -> str | None:
                    with self.sessions() as session:
                        return _not_eligible(session, body.by, role, a, state)

                reason = await self.contracts.in_db(eligible)
                if reason:
                    raise Problem(403, reason, slug="not-an-approver")
        result = await self.contracts.send_update(
            contract_id,
            ContractWorkflow.decide_amendment,
            DecideAmendmentInput(amendment_id, decision, body.by, role, body.comment),
        )
        return _accepted(result)

    # ------------------------------------------------------------------ read
    async def list_amendments(self, contract_id: str) -> list[s.AmendmentOut]:
        state = await self._state(contract_id)
        return [_out(a) for a in state.amendments]

    async def get(self, contract_id: str, amendment_id: str) -> s.AmendmentOut:
        return _out(_find(await self._state(contract_id), amendment_id))

    async def versions(self, contract_id: str) -> list[s.VersionOut]:
        state = await self._state(contract_id)
        versions = list(state.versions)
        out = [] if versions else [s.VersionOut(version=1, at=state.spec.effective_at, amendment_id=None,
                                                 summary="as signed", clauses=[], approved_by=[])]
        for v in versions:
            out.append(s.VersionOut(
                version=v.version, at=v.at, amendment_id=v.amendment_id, summary=v.summary,
                clauses=[s.ClauseOut(**_fields(c)) for c in v.clauses],
                approved_by=[s.DecisionOut(**_fields(d)) for d in v.approvals],
            ))
        return out

    async def _state(self, contract_id: str) -> ContractState:
        row = await self.contracts.in_db(self.contracts.row, contract_id)
        state = await self.contracts.live_state(row)
        # A decided amendment's impact lives in the read model (the workflow lets it go).
        missing = {a.id: a for a in state.amendments if a.impact is None}
        if missing:
            from core.serde import from_jsonable

            def read() -> list[AmendmentRecord]:
                with self.sessions() as session:
                    return list(session.execute(select(AmendmentRecord).where(
                        AmendmentRecord.contract_id == contract_id, AmendmentRecord.amendment_id.in_(list(missing)))
                    ).scalars().all())

            records = await self.contracts.in_db(read)
            for r in records:
                if r.record.get("impact") is not None:
                    missing[r.amendment_id].impact = from_jsonable(AmendmentImpact, r.record["impact"])
            if any(a.impact is None for a in missing.values()):
                raise Problem(503, "an amendment's impact is not in the read model yet; try again in a moment",
                              slug="read-model-behind")
        return state


# ---------------------------------------------------------------- approvers


def _approver_for(session: Session, role: str, state: ContractState) -> str:
    """The person asked to approve for ``role``."""
    if role == "manager":
        chain = org.manager_chain(session, state.spec.owner, 1)
        if chain:
            return chain[0].id
        head = org.department_head(session, "sales")
        return head.id if head else role
    user = org.default_assignee(session, rules.ROLE_DEPARTMENTS.get(role, role)) or org.department_head(
        session, rules.ROLE_DEPARTMENTS.get(role, role))
    return user.id if user else role


def _not_eligible(session: Session, user_id: str, role: str, a: AmendmentState, state: ContractState) -> str | None:
    """Why ``user_id`` may not decide for ``role`` (None: they may).  Manager: anyone above the
    sales owner; finance, legal and other roles: anyone in that department; always the person
    the request named."""
    if a.approvers.get(role) == user_id:
        return None
    user = org.find_user(session, user_id)
    if user is None or not user.active:
        return f"{user_id!r} is not an active user"
    if role == "manager":
        if user_id in {u.id for u in org.manager_chain(session, state.spec.owner, 5)}:
            return None
        return f"{user_id} is not a manager of the contract's owner ({state.spec.owner})"
    if user.department == rules.ROLE_DEPARTMENTS.get(role, role):
        return None
    return f"{user_id} is not in the {role} department"


def _check_moves(state, changes: list[AmendmentChange]) -> None:
    """A new due date equal to the current one moves nothing: 422, not a version that changes nothing."""
    for i, c in enumerate(changes):
        if c.kind != "move_due" or c.due_at is None or c.due_at.tzinfo is None:
            continue
        items = state.milestones if c.item_type == "milestone" else state.installments
        item = next((x for x in items if x.key == c.key), None)
        if item is not None and item.due_at is not None and item.due_at == c.due_at:
            message = f"{c.item_type} {c.key!r} is already due at {c.due_at.isoformat()}"
            raise Problem(422, f"changes[{i}].due_at: {message}", slug="invalid",
                          errors=[{"field": f"changes[{i}].due_at", "message": message}])


def _check_people(session: Session, changes: list[AmendmentChange]) -> None:
    """A new owner (``change_owner``, ``add_milestone``) is someone the organisation knows, in a
    department it has: 422 before anything is proposed."""
    people: dict[str, str] = {}
    departments: dict[str, str] = {}
    for i, c in enumerate(changes):
        if c.owner:
            people[f"changes[{i}].owner"] = c.owner
        if c.department:
            departments[f"changes[{i}].department"] = c.department
        if c.milestone is not None:
            people[f"changes[{i}].milestone.owner"] = c.milestone.owner
            departments[f"changes[{i}].milestone.department"] = c.milestone.department
    missing = org.who_is_missing(session, people, departments)
    if missing:
        raise Problem(422, "; ".join(f"{f}: {m}" for f, m in missing), slug="invalid",
                      errors=[{"field": f, "message": m} for f, m in missing])


# ---------------------------------------------------------------- conversions


def _change(c: s.AmendmentChangeIn, where: str) -> AmendmentChange:
    return AmendmentChange(
        kind=c.kind,
        key=c.key,
        item_type=c.item_type,
        shift=_shift(c.shift, f"{where}.shift"),
        due_at=c.due_at,
        owner=c.owner,
        department=c.department,
        milestone=_milestone(c.milestone, f"{where}.milestone") if c.milestone else None,
        amount=c.amount,
        installments=[_installment(x, f"{where}.installments[{i}]") for i, x in enumerate(c.installments)]
        if c.installments is not None else None,
        end_at=c.end_at,
    )


def _zone(state: ContractState, settings: Any) -> ZoneInfo:
    """The business zone the contract's dates are read in (as at its creation)."""
    policy = state.spec.policy
    return ZoneInfo(policy.business_timezone if policy is not None and policy.business_timezone
                    else settings.business_timezone)


def _end_date(change: AmendmentChange, text: str | None, tz: ZoneInfo, where: str) -> AmendmentChange:
    """extend_end given as a last day (``end_date``, as at creation) rather than an instant:
    the term then ends at the following midnight in the business zone."""
    if text is None:
        if change.kind == "extend_end" and change.end_at is None:
            raise _invalid(where.removesuffix(".end_date"),
                           "extend_end needs end_date (the new last day) or end_at (an instant with a zone)")
        return change
    if change.kind != "extend_end":
        raise _invalid(where, "end_date is for extend_end changes only")
    if change.end_at is not None:
        raise _invalid(where, "give end_date (the last day) or end_at (an instant), not both")
    try:
        end_at = parse_contract_date(text.strip(), tz, end=True, field=where)
    except SpecError as exc:
        raise Problem(422, "; ".join(m for _f, m in exc.errors), slug="invalid",
                      errors=[{"field": f, "message": m} for f, m in exc.errors]) from None
    return dataclasses.replace(change, end_at=end_at)


def _invalid(where: str, message: str) -> Problem:
    return Problem(422, f"{where}: {message}", slug="invalid", errors=[{"field": where, "message": message}])


def _shift(text: str | None, where: str) -> str | None:
    """A move_due shift: an ISO 8601 duration, forwards or (with a leading '-') backwards, capped
    like every duration (core/durations.check_duration) before the workflow adds it to a date."""
    if text is not None:
        try:
            value = check_duration(text.removeprefix("-"))
        except DurationError as exc:
            raise _invalid(where, str(exc)) from exc
        if not value:  # P0D, PT0S: an amendment that changes nothing would still become a version
            raise _invalid(where, f"a shift of {text} moves nothing")
    return text


def _milestone(m: MilestoneIn, where: str) -> MilestoneSpec:
    errors: list = []
    if not (m.name and m.kind and m.owner and m.department):
        missing = [f for f in ("name", "kind", "owner", "department") if not getattr(m, f)]
        raise Problem(422, f"{where}: missing {', '.join(missing)}", slug="invalid")
    rule = due_rule(m, where, errors)
    if errors or rule is None:
        raise Problem(422, "; ".join(f"{f}: {msg}" for f, msg in errors), slug="invalid")
    deps = m.depends_on if m.depends_on is not None else ([rule.after] if rule.after else [])
    return MilestoneSpec(key=m.key, name=m.name, kind=m.kind, owner=m.owner.strip(), department=m.department,
                         due=rule, standard=m.standard or "", depends_on=deps, reminders=m.reminders,
                         planned_cost=m.planned_cost)


def _installment(i: InstallmentIn, where: str) -> InstallmentSpec:
    errors: list = []
    rule = due_rule(i, where, errors)
    if errors or rule is None:
        raise Problem(422, "; ".join(f"{f}: {msg}" for f, msg in errors), slug="invalid")
    return InstallmentSpec(i.key, i.amount, rule)


def _find(state: ContractState, amendment_id: str) -> AmendmentState:
    for a in state.amendments:
        if a.id == amendment_id:
            return a
    raise Problem(404, f"contract has no amendment {amendment_id!r}", slug="amendment-not-found")


def _missing(a: AmendmentState) -> list[str]:
    done = {d.role for d in a.decisions if d.decision == "approved"}
    return [r for r in a.required_roles if r not in done] if a.status == "pending" else []


def _item(x) -> s.ItemImpactOut:
    return s.ItemImpactOut(
        item_type=x.item_type, key=x.key, name=x.name, change=x.change, old_due_at=x.old_due_at,
        new_due_at=x.new_due_at, shift_days=round(x.shift_seconds / 86400, 4) if x.shift_seconds is not None else None,
        old_owner=x.old_owner, new_owner=x.new_owner, old_amount=x.old_amount, new_amount=x.new_amount,
        overdue_before=x.overdue_before, overdue_after=x.overdue_after,
    )


def _out(a: AmendmentState) -> s.AmendmentOut:
    i = a.impact
    assert i is not None  # filled from the read model by AmendmentService._state
    return s.AmendmentOut(
        id=a.id, number=a.number, status=a.status, requested_by=a.requested_by, reason=a.reason,
        requested_at=a.requested_at, required_roles=a.required_roles, approvers=a.approvers,
        missing_roles=_missing(a), decisions=[s.DecisionOut(**_fields(d)) for d in a.decisions],
        decided_at=a.decided_at, contract_version=a.contract_version, based_on_version=a.based_on_version,
        impact=s.ImpactOut(
            milestones=[_item(x) for x in i.items], installments=[_item(x) for x in i.installments],
            old_amount=i.old_amount, new_amount=i.new_amount, amount_delta=i.amount_delta,
            old_outstanding=i.old_outstanding, new_outstanding=i.new_outstanding, old_end_at=i.old_end_at,
            new_end_at=i.new_end_at, becomes_on_time=i.becomes_on_time, becomes_overdue=i.becomes_overdue,
            affected_people=i.affected_people, clauses=[s.ClauseOut(**_fields(c)) for c in i.clauses],
        ),
        changes=[_jsonable_change(c) for c in a.changes],
    )


def _jsonable_change(c: AmendmentChange) -> dict:
    from core.serde import to_jsonable

    data = {k: v for k, v in to_jsonable(c).items() if v is not None}
    if c.kind != "move_due":
        data.pop("item_type", None)
    return data


def _accepted(result: AmendmentResult) -> s.AmendmentAccepted:
    return s.AmendmentAccepted(**_out(result.amendment).model_dump(), current_contract_version=result.contract_version)
