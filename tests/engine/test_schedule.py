"""schedule: due dates from rules, estimates, what falls due, the one deadline the workflow sleeps to."""

from __future__ import annotations

from datetime import timedelta

from tests.engine.conftest import NOW
from workflows.contract import milestones, schedule
from workflows.types import CompleteMilestoneInput, MilestoneStatus


def test_relative_dates_follow_the_actual_completion_of_the_predecessor(contract):
    c = contract()
    review, scheduling = c.milestone("order_review"), c.milestone("production_scheduling")
    assert review.due_at == NOW + timedelta(days=2) and not review.due_estimated
    assert scheduling.due_at == NOW + timedelta(days=7) and scheduling.due_estimated  # waits on review
    late = NOW + timedelta(days=4)
    c.at(late)
    milestones.complete(c.state, CompleteMilestoneInput("order_review", "li.wei"), c.journal)
    c.date()
    assert scheduling.due_at == late + timedelta(days=5) and not scheduling.due_estimated


def test_working_days_wait_for_the_calendar_and_then_use_its_answer(contract):
    c = contract(notifications={"business_days": True}, end_date="2026-12-31")
    review = c.milestone("order_review")
    wanted: list[str] = []
    schedule.date_open_items(c.state, wanted)
    assert review.due_estimated and wanted  # asked, not guessed
    key = schedule.calendar_key(c.state.spec.clock_start, "P2D")
    assert key in wanted
    c.state.calendar[key] = NOW + timedelta(days=4)  # the activity's answer (a weekend in between)
    schedule.date_open_items(c.state, wanted)
    assert review.due_at == NOW + timedelta(days=4) and not review.due_estimated


def test_what_falls_due_turns_overdue_once_and_starts_its_chase(contract):
    c = contract()
    c.at(NOW + timedelta(days=2, seconds=1))
    schedule.fall_due(c.state, c.clock(), c.journal)
    schedule.fall_due(c.state, c.clock(), c.journal)
    assert c.milestone("order_review").status == MilestoneStatus.OVERDUE
    assert c.event_types() == ["milestone.overdue"]
    assert c.journal.fell_due == [("milestone", "order_review")]
    assert schedule.overdue_count(c.state) == 1


def test_the_deadline_is_the_next_firm_date_and_skips_estimates(contract):
    c = contract()
    assert schedule.next_deadline(c.state, None) == NOW + timedelta(days=2)  # order review
    c.milestone("order_review").status = MilestoneStatus.DONE
    for m in c.state.milestones:
        if m.key != "order_review":
            m.due_estimated = True
    for i in c.state.installments:
        i.due_estimated = True
    assert schedule.next_deadline(c.state, None) == c.state.spec.end_at  # only the end of term left
    escalation = NOW + timedelta(hours=5)
    assert schedule.next_deadline(c.state, escalation) == escalation


def test_calendar_months_are_kept_but_never_shared_across_time_zones():
    """add_duration keeps month and year sums (a contract re-dates its installments after every
    change); the same instant written in another zone is another key, with its own answer."""
    from datetime import datetime, timezone

    import isodate

    from core.durations import add_duration

    shanghai = datetime(2026, 1, 31, 10, 0, tzinfo=timezone(timedelta(hours=8)))
    utc = shanghai.astimezone(timezone.utc)
    assert shanghai == utc
    for text in ("P1M", "P1Y", "P1M15D", "P3M"):
        for start in (shanghai, utc, shanghai, utc):  # second round: answered from the cache
            got = add_duration(start, text)
            want = start + isodate.parse_duration(text)
            assert got == want and got.tzinfo is start.tzinfo and got.isoformat() == want.isoformat()
    assert add_duration(shanghai, "P1M").isoformat() == "2026-02-28T10:00:00+08:00"
    assert add_duration(utc, "P1M").isoformat() == "2026-02-28T02:00:00+00:00"


def _walked_one_by_one(state, wanted):
    """What date_open_items gave before it remembered predecessors: every chain walked per item."""
    out = []
    for m in state.milestones:
        if m.status not in schedule.RESOLVED_MILESTONE:
            out.append(("m", m.key, *schedule.due(state, m.due, wanted)))
    for i in state.installments:
        if i.status != schedule.InstallmentStatus.PAID:
            out.append(("i", i.key, *schedule.due(state, i.due, wanted)))
    return out


def test_a_pass_walks_each_chain_once_with_the_same_dates_and_calendar_requests(contract):
    """date_open_items remembers each open predecessor's date within a pass.  The dates, estimates
    and the working-day requests (their order decides the order of the workflow's activities)
    must be exactly those of walking every chain again, at every stage of the contract."""
    for business_days in (False, True):
        c = contract(notifications={"business_days": business_days}, end_date="2026-12-31")
        keys = [m.key for m in c.state.milestones]
        for done in range(len(keys) + 1):
            c.at(NOW + timedelta(days=3 * done))
            if done:
                milestones.complete(c.state, CompleteMilestoneInput(keys[done - 1], "li.wei"), c.journal)
            expected_wanted: list[str] = []
            expected = _walked_one_by_one(c.state, expected_wanted)
            wanted: list[str] = []
            schedule.date_open_items(c.state, wanted)
            got = [("m", m.key, m.due_at, m.due_estimated) for m in c.state.milestones
                   if m.status not in schedule.RESOLVED_MILESTONE]
            got += [("i", i.key, i.due_at, i.due_estimated) for i in c.state.installments
                    if i.status != schedule.InstallmentStatus.PAID]
            assert got == expected and wanted == expected_wanted, (business_days, done)
            assert not business_days or wanted  # the working-day case did ask the calendar
