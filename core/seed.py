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

from core.security import hash_password
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


ADMIN_USER = "admin"


def seed_demo_org(session: Session, password: str | None = None) -> int:
    """Add the demo departments and users that are missing.  Returns how many rows were added.
    ``password`` (dev only: Settings refuses the demo org in production) is given to every demo
    person who has none yet.  Does not commit: the caller owns the transaction."""
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
        department = session.get(Department, key)
        assert department is not None  # added above
        if department.head_id is None and head is not None:
            department.head_id = head
        if department.default_assignee_id is None and assignee is not None:
            department.default_assignee_id = assignee
    if password:
        hashed = None
        for user_id, *_rest in USERS:
            user = session.get(User, user_id)
            if user is not None and user.password_hash is None:
                hashed = hashed or hash_password(password)  # argon2 is slow on purpose: hash once
                user.password_hash = hashed
    session.flush()
    return added


def ensure_admin(session: Session, password: str) -> bool:
    """The "admin" person (role admin), with ``password`` if they have none yet (a password changed
    since is kept).  Returns whether anything changed.  Does not commit."""
    user = session.get(User, ADMIN_USER)
    if user is None:
        user = User(id=ADMIN_USER, name="Administrator", email="admin@example.com", department=None,
                    manager_id=None, locale="en", active=True, created_at=datetime.now(timezone.utc),
                    extra_roles="admin")
        session.add(user)
    elif user.password_hash is not None and "admin" in (user.extra_roles or "").split():
        return False
    if "admin" not in (user.extra_roles or "").split():
        user.extra_roles = ((user.extra_roles or "") + " admin").strip()
    if user.password_hash is None:
        user.password_hash = hash_password(password)
    session.flush()
    return True


def seed_demo_org_once(sessions: sessionmaker[Session], password: str | None = None,
                       admin_password: str | None = None) -> int:
    """Run the seed in its own transaction; a concurrent seeder (a second API process) winning
    the race is fine, so a duplicate key is retried once and then ignored."""
    for attempt in (1, 2):
        try:
            with sessions.begin() as session:
                added = seed_demo_org(session, password)
                if admin_password:
                    ensure_admin(session, admin_password)
                return added
        except IntegrityError:
            if attempt == 2:
                log.warning("demo org seed raced with another process; leaving it as it is")
    return 0
