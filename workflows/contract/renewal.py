"""The end of term: an auto-renewing contract's next term, as a new contract linked to this one."""

from __future__ import annotations

from dataclasses import replace

from core.durations import add_duration
from workflows.types import ContractSpec, ContractState, ContractStatus, DueRule, InstallmentSpec, MilestoneSpec


def wanted(state: ContractState) -> bool:
    r = state.spec.renewal
    return r is not None and r.auto_renew and state.renewed_by is None and state.status == ContractStatus.ACTIVE


def next_term(state: ContractState, new_id: str) -> ContractSpec:
    """The next term's spec: the contract as it stands now (amendments included), starting at the
    end date; fixed dates move by the term's length, offsets count anew."""
    old = state.spec
    assert old.renewal is not None
    shift = old.end_at - old.effective_at

    def moved(rule: DueRule) -> DueRule:
        return DueRule(at=rule.at + shift) if rule.at is not None else DueRule(offset=rule.offset, after=rule.after)

    milestones = [
        MilestoneSpec(key=m.key, name=m.name, kind=m.kind, owner=m.owner, department=m.department, due=moved(m.due),
                      standard=m.standard, depends_on=list(m.depends_on),
                      reminders=list(m.reminders) if m.reminders is not None else None, planned_cost=m.planned_cost)
        for m in state.milestones
    ]
    installments = [InstallmentSpec(key=i.key, amount=i.amount, due=moved(i.due)) for i in state.installments]
    external = f"{old.external_id}/renewal-{new_id[:6]}"[:100] if old.external_id else None
    return replace(old, contract_id=new_id, effective_at=old.end_at, clock_start=old.end_at,
                   end_at=add_duration(old.end_at, old.renewal.term), renewal_of=old.contract_id, erp_order_no=None,
                   external_id=external, milestones=milestones, installments=installments)
