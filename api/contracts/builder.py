"""Turns a contract request (playbook + overrides, or explicit milestones) into a ContractSpec.

Everything a person can get wrong is checked here, before anything is written or started,
and reported as a list of (field, message) so the API answers one clear 422.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from activities.calendar import CalendarUnavailable, is_workday
from api.contracts.schemas import ContractCreate, InstallmentIn, MilestoneIn
from api.platform.fields import CONTRACT_ITEMS_MAX, MAX_YEAR, MIN_YEAR, SUPPORTED_DATES
from core.durations import DurationError, add_duration, check_duration
from core.money import MoneyError, check_currency, minor_units, parse_amount, quantize
from core.playbooks import get_playbook, load_playbooks
from workflows.types import (
    MILESTONE_KINDS,
    AmendmentPolicy,
    ContractSpec,
    DueRule,
    EscalationLevel,
    InstallmentSpec,
    MilestoneSpec,
    NotificationPolicy,
    RenewalPolicy,
)


class SpecError(ValueError):
    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))


@dataclass
class _Draft:
    key: str
    name: str | None = None
    kind: str | None = None
    owner: str | None = None
    department: str | None = None
    standard: str | None = None
    due: DueRule | None = None
    depends_on: list[str] | None = None
    reminders: list[str] | None = None
    planned_cost: str | None = None


def parse_contract_date(value: str, tz: ZoneInfo, *, end: bool, field: str) -> datetime:
    """A calendar date starts at 00:00 in the business zone; an end date runs to the end of that day."""
    try:
        moment = date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
    except ValueError:
        raise SpecError([(field, f"{value!r} is not an ISO date (2026-03-01) or date-time with a zone")]) from None
    if not isinstance(moment, datetime):  # a calendar date
        _check_year(moment, value, field)  # before the arithmetic: 9999-12-31 has no next day
        start = datetime.combine(moment, time(0), tzinfo=tz)
        return start + timedelta(days=1) if end else start
    if moment.tzinfo is None:
        raise SpecError([(field, f"{value!r} has no timezone; add one, e.g. +08:00")])
    _check_year(moment, value, field)
    return moment


def _check_year(moment: date, text: str, field: str) -> None:
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise SpecError([(field, f"{text!r} is outside the supported dates ({SUPPORTED_DATES})")])


def build_spec(
    req: ContractCreate,
    *,
    contract_id: str,
    now: datetime,
    business_tz: str = "Asia/Shanghai",
    department_assignee: Callable[[str], str | None] | None = None,
) -> ContractSpec:
    """``department_assignee(dept)`` fills playbook steps owned by ``$department`` with that
    department's default assignee (finance's invoicing owner...); the sales owner otherwise."""
    errors: list[tuple[str, str]] = []
    tz = ZoneInfo(business_tz)

    try:
        currency = check_currency(req.currency)
        places = minor_units(currency)
    except MoneyError as exc:
        raise SpecError([("currency", str(exc))]) from exc
    try:
        amount = parse_amount(req.amount, currency)
    except MoneyError as exc:
        errors.append(("amount", str(exc)))
        amount = Decimal(0)

    effective_at = parse_contract_date(req.effective_date, tz, end=False, field="effective_date")
    end_at = parse_contract_date(req.end_date, tz, end=True, field="end_date")
    if end_at <= effective_at:
        errors.append(("end_date", "the end date must be after the effective date"))
    clock_start = max(effective_at, now)

    playbook = None
    if req.playbook is not None:
        playbook = get_playbook(req.playbook)
        if playbook is None:
            known = ", ".join(sorted(load_playbooks()))
            raise SpecError([("playbook", f"unknown playbook {req.playbook!r}; known: {known}")])
    if playbook is None and not req.milestones:
        errors.append(("milestones", "give a playbook, explicit milestones, or both"))

    # ---- milestones: playbook first, then the request's overrides and additions
    drafts: dict[str, _Draft] = {}
    if playbook is not None:
        for d in _playbook_milestones(playbook, req.owner, effective_at, end_at):
            if d.owner == "$department" and d.department:
                d.owner = (department_assignee(d.department) if department_assignee else None) or req.owner
            drafts[d.key] = d
    for i, m in enumerate(req.milestones or []):
        _merge(drafts, m, f"milestones[{i}]", errors)
    if len(drafts) > CONTRACT_ITEMS_MAX:
        # Before anything else is worked out for each: a long term of a monthly playbook makes thousands.
        raise SpecError([("milestones", f"the contract would have {len(drafts)} milestones (with the playbook's "
                                        f"repeating steps over its term); at most {CONTRACT_ITEMS_MAX}")])

    milestones: list[MilestoneSpec] = []
    for key, d in drafts.items():
        where = f"milestones[{key}]"
        if not (d.name and d.kind and d.owner and d.department):
            missing = [f for f in ("name", "kind", "owner", "department") if not getattr(d, f)]
            errors.append((where, "missing " + ", ".join(missing)))
            continue
        if d.kind not in MILESTONE_KINDS:
            errors.append((where, f"kind must be one of {', '.join(MILESTONE_KINDS)}"))
        if d.due is None:
            errors.append((where, "give 'due' (a date-time) or 'due_after' (an ISO 8601 duration)"))
            continue
        deps = d.depends_on if d.depends_on is not None else ([d.due.after] if d.due.after else [])
        milestones.append(
            MilestoneSpec(
                key=key,
                name=d.name,
                kind=d.kind,
                owner=d.owner.strip(),
                department=d.department,
                due=d.due,
                standard=d.standard or "",
                depends_on=deps,
                reminders=d.reminders,
                planned_cost=_cost(d.planned_cost, currency, where, errors),
            )
        )
        for n, text in enumerate(d.reminders or []):
            try:
                check_duration(text, days_only=True)
            except DurationError as exc:
                errors.append((f"{where}.reminders[{n}]", str(exc)))
    keys = {spec.key for spec in milestones}
    for spec in milestones:
        _check_due(spec.due, f"milestones[{spec.key}]", keys, effective_at, errors)
        for dep in spec.depends_on:
            if dep not in keys:
                errors.append((f"milestones[{spec.key}]", f"depends on unknown milestone {dep!r}"))
            elif dep == spec.key:
                errors.append((f"milestones[{spec.key}]", "a milestone cannot depend on itself"))
    if not errors:
        _check_acyclic(milestones, errors)

    # ---- installments: explicit, or the playbook's shares of the amount
    installments: list[InstallmentSpec] = []
    if req.installments:
        seen: set[str] = set()
        for i, inst in enumerate(req.installments):
            where = f"installments[{i}]"
            if inst.key in seen:
                errors.append((where, f"duplicate installment key {inst.key!r}"))
            seen.add(inst.key)
            try:
                inst_amount = parse_amount(inst.amount, currency)
            except MoneyError as exc:
                errors.append((where, str(exc)))
                continue
            rule = due_rule(inst, where, errors)
            if rule is None:
                continue
            _check_due(rule, where, keys, effective_at, errors)
            installments.append(InstallmentSpec(inst.key, str(inst_amount), rule))
        total = sum((Decimal(x.amount) for x in installments), Decimal(0))
        if not errors and total != amount:
            errors.append(
                ("installments", f"installments add up to {total} but the contract amount is {amount} {currency}")
            )
    elif amount > 0:
        installments = _playbook_installments(playbook, amount, places, keys, effective_at, end_at)
    if len(installments) > CONTRACT_ITEMS_MAX:
        errors.append(("installments", f"the contract would have {len(installments)} installments; "
                                       f"at most {CONTRACT_ITEMS_MAX}"))

    policy = _policy(playbook, req, errors)
    if policy.business_days:
        policy.business_timezone = business_tz
        for year in range(effective_at.year, (end_at - timedelta(microseconds=1)).year + 1):
            try:
                is_workday(date(year, 1, 2))
            except CalendarUnavailable as exc:
                errors.append(("notifications.business_days", str(exc)))
                break

    # Worked out before the errors are counted: their mistakes are reported with the others.
    amendment_policy = _amendment_policy(playbook, req, errors)
    renewal_policy = _renewal_policy(playbook, req, errors)
    if errors:
        raise SpecError(errors)
    return ContractSpec(
        contract_id=contract_id,
        title=req.title,
        customer_name=req.customer.name,
        customer_external_id=req.customer.external_id,
        currency=currency,
        amount=str(amount),
        effective_at=effective_at,
        end_at=end_at,
        owner=req.owner,
        milestones=milestones,
        installments=installments,
        playbook=req.playbook,
        external_id=req.external_id,
        erp_order_no=req.erp_order_no,
        minor_units=places,
        clock_start=clock_start,
        policy=policy,
        amendments=amendment_policy,
        renewal=renewal_policy,
    )


# ---------------------------------------------------------------- helpers


def _policy(playbook: dict[str, Any] | None, req: ContractCreate, errors: list) -> NotificationPolicy:
    """Defaults, then the playbook's ``notifications``, then the contract's own overrides."""
    policy = NotificationPolicy()
    layers = [((playbook or {}).get("notifications") or {}, "playbook")]
    if req.notifications is not None:
        layers.append((req.notifications.model_dump(exclude_none=True), "notifications"))
    for layer, _where in layers:
        if "reminders" in layer:
            policy.reminders = list(layer["reminders"])
        if "business_days" in layer:
            policy.business_days = bool(layer["business_days"])
        if "escalation" in layer:
            policy.escalation = [
                EscalationLevel(after=lv["after"], to=list(lv["to"]), cc=list(lv.get("cc", [])),
                                channels=list(lv["channels"]))
                for lv in layer["escalation"]
            ]
    for n, text in enumerate(policy.reminders):
        try:
            check_duration(text, days_only=True)
        except DurationError as exc:
            errors.append((f"notifications.reminders[{n}]", str(exc)))
    previous = None
    for n, level in enumerate(policy.escalation):
        try:
            delay = check_duration(level.after, days_only=True)
        except DurationError as exc:
            errors.append((f"notifications.escalation[{n}].after", str(exc)))
            continue
        if previous is not None and delay < previous:
            errors.append((f"notifications.escalation[{n}].after", "levels must come in order of their delay"))
        previous = delay
    return policy



def _cost(value: str | None, currency: str, where: str, errors: list) -> str | None:
    if value is None:
        return None
    try:
        return str(parse_amount(value, currency))
    except MoneyError as exc:
        errors.append((f"{where}.planned_cost", str(exc)))
        return None


def _renewal_policy(playbook: dict[str, Any] | None, req: ContractCreate, errors: list) -> RenewalPolicy:
    """Defaults (reminders P60D and P30D before the end, no auto-renewal), the playbook's
    ``renewal``, then the contract's."""
    policy = RenewalPolicy()
    layers = [((playbook or {}).get("renewal") or {}, "playbook.renewal")]
    if req.renewal is not None:
        layers.append((req.renewal.model_dump(exclude_none=True), "renewal"))
    for layer, where in layers:
        if "reminders" in layer:
            policy.reminders = list(layer["reminders"])
            for n, text in enumerate(policy.reminders):
                try:
                    check_duration(text, days_only=True)
                except DurationError as exc:
                    errors.append((f"{where}.reminders[{n}]", str(exc)))
        if "auto_renew" in layer:
            policy.auto_renew = bool(layer["auto_renew"])
        if "term" in layer:
            try:
                check_duration(layer["term"])
                policy.term = layer["term"]
            except DurationError as exc:
                errors.append((f"{where}.term", str(exc)))
    return policy


def _amendment_policy(playbook: dict[str, Any] | None, req: ContractCreate, errors: list) -> AmendmentPolicy:
    policy = AmendmentPolicy()
    layers = [((playbook or {}).get("amendments") or {}, "playbook.amendments")]
    if req.amendments is not None:
        layers.append((req.amendments.model_dump(exclude_none=True), "amendments"))
    for layer, where in layers:
        for category, roles in (layer.get("approvals") or {}).items():
            if category not in policy.approvals or not all(isinstance(r, str) and r for r in roles):
                errors.append((f"{where}.approvals.{category}", "unknown category or empty role name"))
                continue
            policy.approvals[category] = list(roles)
        if "approval_within" in layer:
            try:
                check_duration(layer["approval_within"], days_only=True)
                policy.approval_within = layer["approval_within"]
            except DurationError as exc:
                errors.append((f"{where}.approval_within", str(exc)))
    return policy


def _merge(drafts: dict[str, _Draft], m: MilestoneIn, where: str, errors: list) -> None:
    d = drafts.setdefault(m.key, _Draft(key=m.key))
    for field in ("name", "kind", "owner", "department", "standard", "depends_on", "reminders", "planned_cost"):
        value = getattr(m, field)
        if value is not None:
            setattr(d, field, value)
    if m.due is not None or m.due_after is not None or m.after is not None:
        rule = due_rule(m, where, errors)
        if rule is not None:
            d.due = rule
            if m.depends_on is None and d.depends_on is None and rule.after:
                d.depends_on = [rule.after]


def due_rule(item: MilestoneIn | InstallmentIn, where: str, errors: list) -> DueRule | None:
    """The item's due rule (``due``, or ``due_after`` from ``after``); None, with the mistake in
    ``errors``, if it gives neither, both, or a bad duration.  Amendments' new items use it too."""
    if item.due is not None and item.due_after is not None:
        errors.append((where, "give either 'due' or 'due_after', not both"))
        return None
    if item.due is not None:
        if item.after is not None:
            errors.append((where, "'after' goes with 'due_after', not with an absolute 'due'"))
            return None
        return DueRule(at=item.due)
    if item.due_after is not None:
        try:
            check_duration(item.due_after)
        except DurationError as exc:
            errors.append((where, str(exc)))
            return None
        return DueRule(offset=item.due_after, after=item.after)
    errors.append((where, "give 'due' (a date-time) or 'due_after' (an ISO 8601 duration)"))
    return None


def _check_due(rule: DueRule, where: str, keys: set[str], effective_at: datetime, errors: list) -> None:
    if rule.at is not None and rule.at < effective_at:
        errors.append((where, f"due {rule.at.isoformat()} is before the effective date {effective_at.isoformat()}"))
    if rule.after is not None and rule.after not in keys:
        errors.append((where, f"'after' names unknown milestone {rule.after!r}"))


def _check_acyclic(milestones: list[MilestoneSpec], errors: list) -> None:
    edges = {m.key: set(m.depends_on) | ({m.due.after} if m.due.after else set()) for m in milestones}
    state: dict[str, int] = {}

    def visit(k: str, path: list[str]) -> bool:
        if state.get(k) == 1:
            errors.append(("milestones", "dependency cycle: " + " -> ".join([*path, k])))
            return False
        if state.get(k) == 2:
            return True
        state[k] = 1
        ok = all(visit(n, [*path, k]) for n in edges.get(k, ()))
        state[k] = 2
        return ok

    for key in edges:
        if not visit(key, []):
            return


def _months_between(start: datetime, end: datetime) -> int:
    n = 0
    while add_duration(start, f"P{n + 1}M") <= end:
        n += 1
    return n


def _playbook_milestones(book: dict[str, Any], owner: str, start: datetime, end: datetime) -> list[_Draft]:
    drafts: list[_Draft] = []
    months = max(1, _months_between(start, end))
    for m in book["milestones"]:
        base = dict(
            name=m["name"],
            kind=m["kind"],
            owner=owner if m.get("owner", "$owner") == "$owner" else m["owner"],
            department=m["department"],
            standard=m.get("standard", ""),
        )
        repeat = m.get("repeat")
        if repeat == "monthly":
            for k in range(1, months + 1):
                due = min(add_duration(start, f"P{k}M"), end)
                drafts.append(_Draft(key=f"{m['key']}_{k}", due=DueRule(at=due), depends_on=[], **base))
        elif repeat == "quarterly":
            for q in range(1, math.ceil(months / 3) + 1):
                due = min(add_duration(start, f"P{3 * q}M"), end)
                drafts.append(_Draft(key=f"{m['key']}_{q}", due=DueRule(at=due), depends_on=[], **base))
        elif m.get("at_end"):
            drafts.append(_Draft(key=m["key"], due=DueRule(at=end), depends_on=[], **base))
        else:
            after = m.get("after")
            drafts.append(
                _Draft(
                    key=m["key"],
                    due=DueRule(offset=m["due_after"], after=after),
                    depends_on=[after] if after else [],
                    **base,
                )
            )
    return drafts


def _playbook_installments(
    book: dict[str, Any] | None, amount: Decimal, places: int, keys: set[str], start: datetime, end: datetime
) -> list[InstallmentSpec]:
    """Split the amount by the playbook's shares; the last installment absorbs the rounding."""
    plan: list[tuple[str, Decimal, DueRule]] = []
    for item in (book or {}).get("installments", []):
        if item.get("repeat") == "quarterly":
            quarters = math.ceil(max(1, _months_between(start, end)) / 3)
            for q in range(1, quarters + 1):
                after = f"{item['after_repeat']}_{q}"
                plan.append((f"{item['key']}{q}", Decimal(1) / quarters, DueRule(offset=item["due_after"], after=after)))
        else:
            after = item.get("after")
            if after is not None and after not in keys:
                after = None  # the milestone was overridden away: count from the start instead
            plan.append((item["key"], Decimal(item["share"]), DueRule(offset=item["due_after"], after=after)))
    if not plan:
        return [InstallmentSpec("full", str(amount), DueRule(at=end))]
    result: list[InstallmentSpec] = []
    allotted = Decimal(0)
    for n, (key, share, rule) in enumerate(plan):
        part = amount - allotted if n == len(plan) - 1 else quantize(amount * share, places)
        allotted += part
        result.append(InstallmentSpec(key, str(part), rule))
    return result
