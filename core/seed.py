"""The demo organisation: six departments and the people the examples and tests name.

``seed_demo_org`` is idempotent: it adds what is missing and leaves what exists alone (an
operator's edits survive a restart).  The API runs it at start-up when ``SEED_DEMO_ORG=1``
(``python3 run.py`` sets it).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models import Department, User

log = logging.getLogger("seed")

# key, name, head, default assignee
DEPARTMENTS: list[tuple[str, str, str | None, str | None]] = [
    ("sales", "销售部 Sales", "chen.jing", "zhang.min"),
    ("production", "生产部 Production", None, None),
    ("logistics", "物流部 Logistics", "zhao.lei", "zhao.lei"),
    ("delivery", "交付部 Delivery", "wang.fang", "wang.fang"),
    ("finance", "财务部 Finance", "zhou.qiang", "sun.li"),
    ("legal", "法务部 Legal", "liu.yang", "liu.yang"),
]

# id, name, department, manager, locale — managers before the people who report to them.
USERS: list[tuple[str, str, str, str | None, str]] = [
    ("chen.jing", "陈静 (Sales Director)", "sales", None, "zh"),
    ("zhang.min", "张敏 (Sales Manager)", "sales", "chen.jing", "zh"),
    ("li.wei", "李伟", "sales", "zhang.min", "zh"),
    ("wang.fang", "王芳 (Customer acceptance)", "delivery", None, "zh"),
    ("zhao.lei", "赵磊 (Logistics)", "logistics", None, "zh"),
    ("zhou.qiang", "周强 (Finance head)", "finance", None, "zh"),
    ("sun.li", "Sun Li (Invoicing)", "finance", "zhou.qiang", "en"),
    ("liu.yang", "刘洋 (Legal)", "legal", None, "zh"),
]


def seed_demo_org(session: Session) -> int:
    """Add the demo departments and users that are missing.  Returns how many rows were added.
    Does not commit: the caller owns the transaction."""
    added = 0
    for key, name, _head, _assignee in DEPARTMENTS:
        if session.get(Department, key) is None:
            session.add(Department(key=key, name=name))
            added += 1
    session.flush()
    now = datetime.now(timezone.utc)
    for user_id, name, dept, manager, locale in USERS:
        if session.get(User, user_id) is None:
            session.add(
                User(id=user_id, name=name, email=f"{user_id}@example.com", department=dept,
                     manager_id=manager, locale=locale, active=True, created_at=now)
            )
            session.flush()  # managers first: the next user's foreign key points here
            added += 1
    for key, _name, head, assignee in DEPARTMENTS:
        dept = session.get(Department, key)
        if dept.head_id is None and head is not None:
            dept.head_id = head
        if dept.default_assignee_id is None and assignee is not None:
            dept.default_assignee_id = assignee
    session.flush()
    return added


def seed_demo_org_once(sessions: sessionmaker[Session]) -> int:
    """Run the seed in its own transaction; a concurrent seeder (a second API process) winning
    the race is fine, so a duplicate key is retried once and then ignored."""
    for attempt in (1, 2):
        try:
            with sessions.begin() as session:
                return seed_demo_org(session)
        except IntegrityError:
            if attempt == 2:
                log.warning("demo org seed raced with another process; leaving it as it is")
    return 0
