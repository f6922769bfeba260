"""A reminder planned twice by a lost-and-rerun workflow task goes out once (core/outbox.py).

The projection writes reminder plans from a local activity inside the workflow task that made
them.  A worker killed after that write, before the server recorded the task, leaves the task to
run again later, on a later clock: a milestone dated from a completion in that task gets a due date
some seconds on, and its catch-up reminder (due at once) is planned again under another key.  If a
dispatcher had already sent the first copy, the rerun's plan cannot cancel it.  These tests play
that sequence with the real projection, the real dispatcher, a real SMTP server (aiosmtpd) and the
real database (SQLite and PostgreSQL), and count the messages.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from activities.notify import NotifyActivities
from activities.projection import ProjectionActivities
from core.outbox import running_outbox
from core.seed import seed_demo_org
from core.settings import Settings
from models import OutboxNotice
from models.outbox import PENDING
from tests.helpers import make_spec
from tests.test_projection import Contract_
from workflows.contract import milestones
from workflows.types import CompleteMilestoneInput

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
NEXT = "deposit"  # the installment due 7 days after order review is completed: a P7D reminder at once


@pytest.fixture
def org(sessions):
    with sessions.begin() as s:
        seed_demo_org(s)
    return sessions


def _registered(project) -> Contract_:
    """A goods-sale contract registered at T0, its first delta written."""
    c = Contract_(make_spec(T0), now=T0)
    project(c.delta())
    c.projector.settle(c.state)
    return c


def _fork(c: Contract_) -> Contract_:
    """The contract as the server recorded it: what a task that is lost runs again from."""
    twin = copy.deepcopy(c)
    twin.journal.clock = lambda: twin.now  # its own clock (a copied lambda still reads ``c``'s)
    return twin


def _complete_review(c: Contract_, at: datetime, project) -> None:
    """The workflow task that completes order review at ``at`` and projects what it changed."""
    c.now = at
    milestones.complete(c.state, CompleteMilestoneInput("order_review", "li.wei"), c.journal)
    project(c.delta())
    c.projector.settle(c.state)


async def _dispatch(sessions, settings: Settings, at: datetime, dispatchers: int = 1) -> None:
    """Run ``dispatchers`` real dispatchers with the clock at ``at`` until nothing due is left."""
    async def clock() -> datetime:
        return at

    deliver = NotifyActivities(sessions, settings).deliver
    async with _outboxes(sessions, settings, deliver, clock, dispatchers):
        for _ in range(200):
            await asyncio.sleep(0.05)
            with sessions() as s:
                o = OutboxNotice
                waiting = s.execute(select(o.id).where(o.status == PENDING, o.send_at <= at)).all()
            if not waiting:
                return
        raise AssertionError("the dispatcher did not send what was due")


class _outboxes:
    def __init__(self, sessions, settings, deliver, clock, n: int) -> None:
        self._cms = [running_outbox(sessions, settings, deliver, clock) for _ in range(n)]

    async def __aenter__(self) -> None:
        for cm in self._cms:
            await cm.__aenter__()

    async def __aexit__(self, *exc) -> None:
        for cm in reversed(self._cms):
            await cm.__aexit__(None, None, None)


def _reminders_for(mailbox, contract_id: str, item_key: str) -> list[str]:
    keys = [str(m["X-Contracts-Notification"]).strip() for _rcpts, m in mailbox.messages]
    return [k for k in keys if k.startswith(f"{contract_id}:installment:{item_key}:") and ":reminder" in k]


def _rows(sessions, contract_id: str, item_key: str) -> list[OutboxNotice]:
    with sessions() as s:
        o = OutboxNotice
        return list(s.execute(select(o).where(o.contract_id == contract_id, o.item_key == item_key)
                              .order_by(o.id)).scalars())


async def test_a_catch_up_reminder_planned_again_by_a_rerun_task_goes_out_once(org, mailbox):
    sessions = org
    settings = Settings(smtp_port=mailbox.port)
    project = ProjectionActivities(sessions).project_delta
    c = _registered(project)
    rerun = _fork(c)  # what the server recorded before the lost task

    t1 = T0 + timedelta(hours=1)
    _complete_review(c, t1, project)  # the lost task's local activity wrote its plan ...
    first = [r for r in _rows(sessions, c.state.spec.contract_id, NEXT) if r.send_at <= t1]
    assert len(first) == 1, "completing order review plans the deposit's catch-up reminder"
    await _dispatch(sessions, settings, t1 + timedelta(seconds=1))  # ... and it went out
    cid = c.state.spec.contract_id
    assert len(_reminders_for(mailbox, cid, NEXT)) == 1
    sent_before = _reminders_for(mailbox, cid, NEXT)

    # The task runs again 40 s later (the worker came back): same completion, a later clock.
    _complete_review(rerun, t1 + timedelta(seconds=40), project)
    rows = _rows(sessions, cid, NEXT)
    due_now = [r for r in rows if r.send_at <= t1 + timedelta(seconds=40)]
    assert len({r.key for r in due_now}) == 2, "the rerun planned its copy under another key"
    await _dispatch(sessions, settings, t1 + timedelta(seconds=41))

    assert _reminders_for(mailbox, cid, NEXT) == sent_before, "the copy was sent again"
    first_keys = {x.key for x in first}
    twin = next(r for r in _rows(sessions, cid, NEXT)
                if r.key not in first_keys and r.send_at <= t1 + timedelta(seconds=40))
    assert twin.status == "cancelled" and twin.error.startswith("the same reminder went out as ")
    assert twin.told_at is None


async def test_a_rerun_much_later_is_still_one_reminder_and_a_real_new_date_is_another(org, mailbox):
    """The copy is recognised by the contract version it was planned at, however late the task ran
    again (here past a 30 s window); a date that really moved (a later version) is reminded again."""
    sessions = org
    settings = Settings(smtp_port=mailbox.port, outbox_same_reminder_within_seconds=30)
    project = ProjectionActivities(sessions).project_delta
    c = _registered(project)
    rerun = _fork(c)

    t1 = T0 + timedelta(hours=1)
    _complete_review(c, t1, project)
    await _dispatch(sessions, settings, t1 + timedelta(seconds=1))
    cid = c.state.spec.contract_id
    assert len(_reminders_for(mailbox, cid, NEXT)) == 1

    _complete_review(rerun, t1 + timedelta(minutes=10), project)  # ten minutes later: same version
    await _dispatch(sessions, settings, t1 + timedelta(minutes=10, seconds=1))
    assert len(_reminders_for(mailbox, cid, NEXT)) == 1

    # The deposit's date really moves (a later version: here an event, as an amendment logs one):
    # three days earlier, so its 7-day reminder is due again at once.
    t2 = t1 + timedelta(minutes=20)
    rerun.now = t2
    rerun.journal.emit("test.deposit_redated", {})
    deposit = next(i for i in rerun.state.installments if i.key == NEXT)
    deposit.due = replace(deposit.due, offset="P4D")
    project(rerun.delta())
    rerun.projector.settle(rerun.state)
    await _dispatch(sessions, settings, t2 + timedelta(seconds=1))
    assert len(_reminders_for(mailbox, cid, NEXT)) == 2


async def test_two_dispatchers_holding_both_copies_at_once_send_one(org, mailbox):
    sessions = org
    settings = Settings(smtp_port=mailbox.port, outbox_batch=1)
    project = ProjectionActivities(sessions).project_delta
    c = _registered(project)
    await _dispatch(sessions, settings, T0 + timedelta(seconds=1))  # the creation's own reminders
    rerun = _fork(c)

    t1 = T0 + timedelta(hours=1)
    _complete_review(c, t1, project)
    cid = c.state.spec.contract_id
    first = {r.key for r in _rows(sessions, cid, NEXT) if r.send_at <= t1}
    _complete_review(rerun, t1 + timedelta(seconds=40), project)
    # The rerun's plan cancelled the first copy, which was still pending; a dispatcher that had
    # claimed it before sends it all the same.  Put it back as that dispatcher sees it.
    with sessions.begin() as s:
        s.execute(update(OutboxNotice).where(OutboxNotice.key.in_(first)).values(status=PENDING, done_at=None))
    before = len(_reminders_for(mailbox, cid, NEXT))
    await _dispatch(sessions, settings, t1 + timedelta(seconds=41), dispatchers=2)
    assert len(_reminders_for(mailbox, cid, NEXT)) == before + 1
    statuses = sorted(r.status for r in _rows(sessions, cid, NEXT) if r.send_at <= t1 + timedelta(seconds=40))
    assert statuses == ["cancelled", "sent"]
