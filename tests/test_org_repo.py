"""People, tasks and notifications in the database, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core import org
from core.seed import seed_demo_org, seed_demo_org_once
from models import Department, Notification, Task, User


def _notification(**overrides) -> dict:
    fields = dict(
        key="c123:installment:m1:level1:li.wei:email",
        contract_id="c123",
        item_type="installment",
        item_key="m1",
        level=1,
        kind="reminder",
        recipient="li.wei",
        role="owner",
        channel="email",
        subject="Installment m1 is due",
        body="Please chase the customer.",
    )
    return {**fields, **overrides}


def test_seed_is_idempotent_and_builds_the_demo_org(sessions):
    with sessions.begin() as session:
        assert seed_demo_org(session) > 0
    assert seed_demo_org_once(sessions) == 0  # the second run adds nothing
    with sessions() as session:
        assert {d.key for d in org.list_departments(session)} == {
            "sales", "production", "logistics", "delivery", "finance", "legal"}
        assert [u.id for u in org.manager_chain(session, "li.wei", 5)] == ["zhang.min", "chen.jing"]
        assert org.default_assignee(session, "finance").id == "sun.li"
        # All at once (a new contract's steps) is the same as one by one.
        every = {d.key: getattr(org.default_assignee(session, d.key), "id", None) for d in org.list_departments(session)}
        assert org.default_assignees(session) == {k: v for k, v in every.items() if v is not None}
        assert org.default_assignees(session)["finance"] == "sun.li"
        assert org.department_head(session, "finance").id == "zhou.qiang"
        assert org.department_head(session, "production") is None
        assert org.find_user(session, "li.wei").email == "li.wei@example.com"
        assert {u.locale for u in org.list_users(session)} == {"zh", "en"}


def test_manager_chain_depth_top_and_cycles(sessions):
    with sessions.begin() as session:
        seed_demo_org(session)
    with sessions() as session:
        assert [u.id for u in org.manager_chain(session, "li.wei", 1)] == ["zhang.min"]
        assert org.manager_chain(session, "li.wei", 0) == []
        assert org.manager_chain(session, "chen.jing", 3) == []  # the top
        assert org.manager_chain(session, "nobody", 3) == []

    # The API refuses cycles, but a chain written by hand may hold one: it must still end.
    with sessions.begin() as session:
        session.get(User, "chen.jing").manager_id = "li.wei"
    with sessions() as session:
        assert [u.id for u in org.manager_chain(session, "li.wei", 10)] == ["zhang.min", "chen.jing"]


def test_manager_cycle_and_unknown_references_are_refused(sessions):
    with sessions.begin() as session:
        seed_demo_org(session)
    with sessions.begin() as session:
        with pytest.raises(org.Invalid, match="cycle"):
            org.update_user(session, "chen.jing", manager_id="li.wei")
        with pytest.raises(org.Invalid, match="own manager"):
            org.update_user(session, "li.wei", manager_id="li.wei")
        with pytest.raises(org.Invalid) as exc:
            org.update_user(session, "li.wei", department="marketing")
        assert exc.value.field == "department"
        with pytest.raises(org.Conflict):
            org.create_user(session, id="li.wei", name="Li Wei", email="x@example.com")
        with pytest.raises(org.Conflict, match="'li.wei' already exists: ids differing only in letter case"):
            org.create_user(session, id="LI.Wei", name="Li Wei", email="x@example.com")
        with pytest.raises(org.NotFound):
            org.update_user(session, "nobody", name="x")
        moved = org.update_user(session, "li.wei", manager_id="chen.jing", locale="en")
        assert moved.manager_id == "chen.jing" and moved.locale == "en"


def test_inactive_default_assignee_is_not_returned(sessions):
    with sessions.begin() as session:
        seed_demo_org(session)
        org.update_user(session, "sun.li", active=False)
    with sessions() as session:
        assert org.default_assignee(session, "finance") is None
        assert "finance" not in org.default_assignees(session)
        assert org.default_assignee(session, "unknown") is None
        assert (org.default_assignee(session, "finance") or org.department_head(session, "finance")).id == "zhou.qiang"


def test_notification_decision_is_recorded_exactly_once(sessions):
    with sessions.begin() as session:
        first, created = org.record_notification_decision(session, **_notification())
        assert created is True and first.status == "decided" and first.attempts == 0
    with sessions.begin() as session:
        # A retried activity decides the same thing again, with a different wording even.
        again, created = org.record_notification_decision(session, **_notification(subject="changed"))
        assert created is False
        assert again.id == first.id and again.subject == "Installment m1 is due"
        other, created = org.record_notification_decision(
            session, **_notification(key="c123:installment:m1:level2:zhang.min:email", level=2,
                                     kind="escalation", recipient="zhang.min", role="manager"))
        assert created is True and other.id != first.id
    with sessions() as session:
        assert session.execute(select(func.count()).select_from(Notification)).scalar_one() == 2


def test_notification_sent_and_failed(sessions):
    key = _notification()["key"]
    with sessions.begin() as session:
        org.record_notification_decision(session, **_notification())
    with sessions.begin() as session:
        failed = org.mark_notification_failed(session, key, "SMTP 421 try later")
        assert failed.status == "failed" and failed.error == "SMTP 421 try later" and failed.attempts == 1
    with sessions.begin() as session:
        sent = org.mark_notification_sent(session, key)
        assert sent.status == "sent" and sent.sent_at is not None and sent.attempts == 2 and sent.error is None
    with sessions.begin() as session:
        # Sent stays sent: a late duplicate "failed" or "sent" changes nothing.
        assert org.mark_notification_failed(session, key, "late").status == "sent"
        assert org.mark_notification_sent(session, key).attempts == 2
        with pytest.raises(org.NotFound):
            org.mark_notification_sent(session, "no-such-key")
        with pytest.raises(TypeError):
            org.record_notification_decision(session, key="k")  # fields missing
    with sessions() as session:
        row = org.get_notification(session, key)
        assert row.sent_at.tzinfo is not None


def test_tasks_are_idempotent_and_acked_once(sessions):
    args = ("handoff:c9:invoicing", "c9", "invoicing", "sun.li", "Issue the invoice", "Goods accepted.")
    with sessions.begin() as session:
        task, created = org.open_task(session, *args)
        assert created is True and task.status == "open"
    with sessions.begin() as session:
        again, created = org.open_task(session, *args)
        assert created is False and again.id == task.id
        org.open_task(session, "handoff:c9:payment_collection", "c9", "payment_collection", "sun.li", "Collect", "")
        org.open_task(session, "handoff:c9:shipping", "c9", "shipping", "zhao.lei", "Ship", "")
    with sessions() as session:
        inbox = org.list_tasks(session, assignee="sun.li", status="open")
        assert [t.milestone_key for t in inbox] == ["payment_collection", "invoicing"]  # newest first
        assert session.execute(select(func.count()).select_from(Task)).scalar_one() == 3

    with sessions.begin() as session:
        acked = org.ack_task(session, task.id, "sun.li")
        assert acked.status == "acked" and acked.acked_by == "sun.li" and acked.acked_at is not None
    with sessions.begin() as session:
        with pytest.raises(org.Conflict):
            org.ack_task(session, task.id, "sun.li")
        with pytest.raises(org.NotFound):
            org.ack_task(session, 999_999, "sun.li")
    with sessions.begin() as session:
        assert org.complete_task(session, "handoff:c9:invoicing").status == "done"
        assert org.complete_task(session, "handoff:c9:invoicing").status == "done"
        assert org.complete_task(session, "no-such-task") is None
    with sessions() as session:
        assert [t.milestone_key for t in org.list_tasks(session, assignee="sun.li", status="open")] == [
            "payment_collection"]


def test_department_head_and_assignee_must_exist(sessions):
    with sessions.begin() as session:
        seed_demo_org(session)
        with pytest.raises(org.Invalid):
            org.create_department(session, key="qa", name="QA", head_id="nobody")
        dept = org.create_department(session, key="qa", name="QA", head_id="liu.yang", webhook_secret="s3")
        assert dept.head_id == "liu.yang"
        org.replace_department(session, "qa", name="Quality", default_assignee_id="wang.fang")
    with sessions() as session:
        qa = session.get(Department, "qa")
        assert (qa.name, qa.head_id, qa.default_assignee_id, qa.webhook_secret) == (
            "Quality", None, "wang.fang", "s3")


def test_the_embedded_default_is_the_projects_data_folder_from_any_directory(tmp_path, monkeypatch):
    """`contracts doctor` run from another directory looked for ./data/contracts.db there."""
    from pathlib import Path

    from core.settings import Settings

    for name in ("DATABASE_URL", "DOCUMENT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    data = Path(__file__).resolve().parent.parent / "data"
    settings = Settings()
    assert settings.database_url == f"sqlite:///{data / 'contracts.db'}"
    assert settings.document_dir == str(data / "documents")
