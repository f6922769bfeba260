"""renewal: the next term as a new contract, as the contract stands (amendments included)."""

from __future__ import annotations

from datetime import timedelta

from workflows.contract import renewal


def test_the_next_term_starts_at_the_end_with_fixed_dates_moved_and_offsets_anew(contract):
    c = contract(renewal={"auto_renew": True, "term": "P6M"},
                 milestones=[{"key": "audit", "name": "Audit", "kind": "custom", "owner": "li.wei",
                              "department": "sales", "due": "2026-06-30T00:00:00+00:00"}])
    old = c.state.spec
    assert renewal.wanted(c.state)
    c.milestone("audit").owner = "zhang.min"  # an amendment changed it
    nxt = renewal.next_term(c.state, "abcdef0123456789")
    assert nxt.contract_id == "abcdef0123456789" and nxt.renewal_of == old.contract_id
    assert nxt.effective_at == old.end_at == nxt.clock_start and nxt.erp_order_no is None
    audit = next(m for m in nxt.milestones if m.key == "audit")
    assert audit.owner == "zhang.min" and audit.due.at == c.milestone("audit").due.at + (old.end_at - old.effective_at)
    review = next(m for m in nxt.milestones if m.key == "order_review")
    assert review.due.offset == "P2D" and review.due.at is None
    assert nxt.end_at - nxt.effective_at >= timedelta(days=180)
    c.state.renewed_by = nxt.contract_id
    assert not renewal.wanted(c.state)  # renewed once
