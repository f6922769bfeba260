"""People, departments, the task inbox and the notification log: the repository.

Plain synchronous functions over a SQLAlchemy ``Session``, so Temporal activities (reminders,
escalation, hand-offs) and the API call the same code.  They never commit: the caller owns the
transaction (``with sessions.begin() as session: ...``).

Exactly-once writes (``open_task``, ``record_notification_decision``) insert with
``INSERT ... ON CONFLICT (key) DO NOTHING`` on PostgreSQL and SQLite alike, so a retried or
replayed activity finds the row it wrote the first time instead of writing a second one.

Errors are ``NotFound`` (a ``LookupError``), ``Conflict`` and ``Invalid`` (a ``ValueError``);
the API maps them to 404, 409 and 422.
"""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models import AmendmentRecord, Contract, Department, Installment, Milestone, Notification, Task, User
from models.db import rows_changed
from workflows.types import AmendmentStatus, ContractStatus, InstallmentStatus, MilestoneStatus

LOCALES = ("zh", "en")
TASK_OPEN, TASK_ACKED, TASK_DONE = "open", "acked", "done"
DECIDED, SENT, FAILED = "decided", "sent", "failed"


class OrgError(Exception):
    slug = "error"

    def __init__(self, message: str, *, slug: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.slug = slug or self.slug
        self.field = field


class NotFound(OrgError, LookupError):
    slug = "not-found"


class Conflict(OrgError):
    slug = "conflict"


class Invalid(OrgError, ValueError):
    slug = "validation"


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ====================================================================== people and organisation
def find_user(session: Session, user_id: str) -> User | None:
    return session.get(User, user_id)


def who_is_missing(session: Session, people: dict[str, str], departments: dict[str, str]) -> list[tuple[str, str]]:
    """(field, message) for each person who is not an active user and each department that does
    not exist; ``people`` and ``departments`` map a request's field to the id or key it names.
    Every item needs one owner who can be reminded: a name nobody answers to is no owner."""
    users = dict(session.execute(select(User.id, User.active).where(User.id.in_(set(people.values())))).all()) \
        if people else {}
    known = set(session.scalars(select(Department.key).where(Department.key.in_(set(departments.values()))))) \
        if departments else set()
    problems = []
    for field, user_id in people.items():
        if user_id not in users:
            problems.append((field, f"no user {user_id!r} in the organisation (add them at POST /users first)"))
        elif not users[user_id]:
            problems.append((field, f"user {user_id!r} is inactive"))
    problems += [(field, f"no department {key!r} (see GET /departments)")
                 for field, key in departments.items() if key not in known]
    return problems


def get_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id!r}", slug="user-not-found")
    return user


def list_users(session: Session, *, department: str | None = None, active: bool | None = None) -> list[User]:
    query = select(User)
    if department is not None:
        query = query.where(User.department == department)
    if active is not None:
        query = query.where(User.active == active)
    return list(session.execute(query.order_by(User.id)).scalars())


def manager_chain(session: Session, user_id: str, depth: int) -> list[User]:
    """The user's manager, the manager's manager, ... at most ``depth`` of them.

    Stops at the top (no manager), at a manager id that names no user, and at a cycle (each
    person appears once).  Inactive managers are included: the caller decides whether to skip
    them (``[m for m in chain if m.active]``).  An unknown ``user_id`` gives ``[]``.
    """
    chain: list[User] = []
    seen = {user_id}
    user = session.get(User, user_id)
    while user is not None and len(chain) < depth:
        manager_id = user.manager_id
        if manager_id is None or manager_id in seen:
            break
        seen.add(manager_id)
        user = session.get(User, manager_id)
        if user is not None:
            chain.append(user)
    return chain


def department_head(session: Session, key: str) -> User | None:
    """The department's head, or None (unknown department, no head, or the head is inactive)."""
    return _active_user(session, _department_attr(session, key, "head_id"))


def default_assignee(session: Session, department_key: str) -> User | None:
    """Who takes the department's hand-offs (finance: the invoicing owner), or None (unknown
    department, none set, or that person is inactive).  Callers typically fall back to the head:
    ``default_assignee(s, k) or department_head(s, k)``."""
    return _active_user(session, _department_attr(session, department_key, "default_assignee_id"))


def default_assignees(session: Session) -> dict[str, str]:
    """``default_assignee`` of every department at once (department key -> active user id), in
    one query: a new contract asks it for each of its department-owned steps."""
    query = (select(Department.key, User.id).join(User, User.id == Department.default_assignee_id)
             .where(User.active.is_(True)))
    return {key: user_id for key, user_id in session.execute(query)}


def _department_attr(session: Session, key: str, attr: str) -> str | None:
    dept = session.get(Department, key)
    return getattr(dept, attr) if dept is not None else None


def _active_user(session: Session, user_id: str | None) -> User | None:
    if user_id is None:
        return None
    user = session.get(User, user_id)
    return user if user is not None and user.active else None


def create_user(
    session: Session,
    *,
    id: str,
    name: str,
    email: str,
    department: str | None = None,
    manager_id: str | None = None,
    locale: str = "zh",
    active: bool = True,
) -> User:
    if session.get(User, id) is not None:
        raise Conflict(f"a user with id {id!r} already exists", slug="user-exists")
    # Log-ins and owners are typed by people: "LI.WEI" beside "li.wei" would be two people for one.
    same = session.execute(select(User.id).where(func.lower(User.id) == id.lower())).scalar_one_or_none()
    if same is not None:
        raise Conflict(f"user {same!r} already exists: ids differing only in letter case are one person",
                       slug="user-exists")
    _check_locale(locale)
    _check_department(session, department)
    if manager_id is not None:
        if manager_id == id:
            raise Invalid("a user cannot be their own manager", field="manager_id")
        _check_user_exists(session, manager_id, "manager_id")
    user = User(
        id=id, name=name, email=email, department=department, manager_id=manager_id,
        locale=locale, active=active, created_at=_now(),
    )
    session.add(user)
    session.flush()
    return user


_USER_FIELDS = {"name", "email", "department", "manager_id", "locale", "active"}
_USER_NULLABLE = {"department", "manager_id"}


def update_user(session: Session, user_id: str, **changes: Any) -> User:
    """Change some of name, email, department, manager_id, locale, active."""
    unknown = set(changes) - _USER_FIELDS
    if unknown:
        raise TypeError(f"update_user: unknown fields {sorted(unknown)}")
    user = get_user(session, user_id)
    for field, value in changes.items():
        if value is None and field not in _USER_NULLABLE:
            raise Invalid(f"{field} cannot be null", field=field)
    if "locale" in changes:
        _check_locale(changes["locale"])
    if "department" in changes:
        _check_department(session, changes["department"])
    if changes.get("manager_id") is not None:
        _check_manager(session, user_id, changes["manager_id"])
    for field, value in changes.items():
        setattr(user, field, value)
    session.flush()
    return user


def _check_locale(locale: str) -> None:
    if locale not in LOCALES:
        raise Invalid(f"locale must be one of {', '.join(LOCALES)}", field="locale")


def _check_department(session: Session, key: str | None) -> None:
    if key is not None and session.get(Department, key) is None:
        raise Invalid(f"no department with key {key!r}", field="department")


def _check_user_exists(session: Session, user_id: str, field: str) -> None:
    if session.get(User, user_id) is None:
        raise Invalid(f"no user with id {user_id!r}", field=field)


def _check_manager(session: Session, user_id: str, manager_id: str) -> None:
    """``manager_id`` must exist and must not have ``user_id`` anywhere above it (a cycle)."""
    if manager_id == user_id:
        raise Invalid("a user cannot be their own manager", field="manager_id")
    _check_user_exists(session, manager_id, "manager_id")
    seen: set[str] = set()
    current: str | None = manager_id
    while current is not None and current not in seen:
        if current == user_id:
            raise Invalid(
                f"{manager_id!r} reports (directly or not) to {user_id!r}: the manager chain would form a cycle",
                field="manager_id",
            )
        seen.add(current)
        above = session.get(User, current)
        current = above.manager_id if above is not None else None


# ---------------------------------------------------------------------- departments
def get_department(session: Session, key: str) -> Department:
    dept = session.get(Department, key)
    if dept is None:
        raise NotFound(f"no department with key {key!r}", slug="department-not-found")
    return dept


def list_departments(session: Session) -> list[Department]:
    return list(session.execute(select(Department).order_by(Department.key)).scalars())


def create_department(
    session: Session,
    *,
    key: str,
    name: str,
    head_id: str | None = None,
    default_assignee_id: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> Department:
    if session.get(Department, key) is not None:
        raise Conflict(f"a department with key {key!r} already exists", slug="department-exists")
    _check_people(session, head_id, default_assignee_id)
    dept = Department(
        key=key, name=name, head_id=head_id, default_assignee_id=default_assignee_id,
        webhook_url=webhook_url, webhook_secret=webhook_secret,
    )
    session.add(dept)
    session.flush()
    return dept


_KEEP = object()


def replace_department(
    session: Session,
    key: str,
    *,
    name: str,
    head_id: str | None = None,
    default_assignee_id: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: Any = _KEEP,
) -> Department:
    """Replace an existing department's fields.  ``webhook_secret`` is never read back by the API,
    so leaving it out keeps the stored one; pass None to clear it."""
    dept = get_department(session, key)
    _check_people(session, head_id, default_assignee_id)
    dept.name = name
    dept.head_id = head_id
    dept.default_assignee_id = default_assignee_id
    dept.webhook_url = webhook_url
    if webhook_secret is not _KEEP:
        dept.webhook_secret = webhook_secret
    session.flush()
    return dept


def _check_people(session: Session, head_id: str | None, default_assignee_id: str | None) -> None:
    if head_id is not None:
        _check_user_exists(session, head_id, "head_id")
    if default_assignee_id is not None:
        _check_user_exists(session, default_assignee_id, "default_assignee_id")


# ====================================================================== exactly-once inserts
def _insert_once(session: Session, model: type, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT (key) DO NOTHING; True if the row was written now."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(model).values(**values).on_conflict_do_nothing(index_elements=["key"])
    return (rows_changed(session.execute(stmt)) or 0) == 1


def _by_key(model: type[Notification] | type[Task], key: str, *, lock: bool = False) -> Select:
    query = select(model).where(model.key == key).execution_options(populate_existing=True)
    return query.with_for_update() if lock else query


# ---------------------------------------------------------------------- notifications
_NOTIFICATION_REQUIRED = ("key", "contract_id", "item_type", "item_key", "kind", "recipient", "role", "channel", "subject")
_NOTIFICATION_OPTIONAL = {"level": 0, "body": ""}


def record_notification_decision(session: Session, **fields: Any) -> tuple[Notification, bool]:
    """Record that a message is to be sent, once per ``key``.

    Fields: key, contract_id, item_type, item_key, kind, recipient, role, channel, subject
    (required), level (0), body ("").  Returns the row and whether it was created now; when it
    already existed nothing is changed, and its ``status`` tells whether it was already sent.
    """
    missing = [f for f in _NOTIFICATION_REQUIRED if fields.get(f) is None]
    unknown = set(fields) - set(_NOTIFICATION_REQUIRED) - set(_NOTIFICATION_OPTIONAL)
    if missing or unknown:
        raise TypeError(f"record_notification_decision: missing {missing}, unknown {sorted(unknown)}")
    values = {**_NOTIFICATION_OPTIONAL, **fields, "status": DECIDED, "attempts": 0, "created_at": _now()}
    created = _insert_once(session, Notification, values)
    return session.execute(_by_key(Notification, fields["key"])).scalar_one(), created


def decide_notification(conn: Connection, **fields: Any) -> str:
    """``record_notification_decision`` straight on a connection (the delivery path: the outbox
    and the notify activity), with a statement built once; returns the row's status after it."""
    values = {**_NOTIFICATION_OPTIONAL, **fields, "status": DECIDED, "attempts": 0, "created_at": _now(),
              "error": None, "sent_at": None}
    conn.execute(_once_insert(conn.dialect.name, "notifications"), values)
    return conn.execute(_STATUS_BY_KEY, {"key": fields["key"]}).scalar_one()


def notification_sent(conn: Connection, key: str) -> None:
    """``mark_notification_sent`` on a connection: a notification already sent stays as it was."""
    conn.execute(_MARK_SENT, {"which": key, "at": _now()})


def task_once(conn: Connection, *, key: str, contract_id: str, milestone_key: str | None, assignee: str,
              title: str, body: str = "") -> None:
    """``open_task`` on a connection, for the delivery path."""
    conn.execute(_once_insert(conn.dialect.name, "tasks"), {
        "key": key, "contract_id": contract_id, "milestone_key": milestone_key, "assignee": assignee,
        "title": title, "body": body, "status": TASK_OPEN, "created_at": _now(), "acked_at": None,
        "acked_by": None})


def close_task_if_settled(conn: Connection, *, key: str, contract_id: str, item_type: str, item_key: str) -> None:
    """Done at once if the read model already holds its item as settled.  Run after the task's
    insert has committed: the projection closes the tasks of an item when it settles it
    (activities/projection.py ``_close_tasks``), and a task delivered just after that would
    otherwise stay open for ever."""
    if item_settled(conn, contract_id, item_type, item_key):
        conn.execute(update(Task).where(Task.key == key, Task.status != TASK_DONE).values(status=TASK_DONE))


def item_settled(conn: Connection, contract_id: str, item_type: str, item_key: str) -> bool:
    """Whether the read model holds the item as settled (its contract closed, a milestone done or
    waived, an installment paid, a role's approval decided or its amendment settled)."""
    status = conn.execute(select(Contract.status).where(Contract.id == contract_id)).scalar_one_or_none()
    if status in (ContractStatus.COMPLETED, ContractStatus.TERMINATED, ContractStatus.EXPIRED):
        return True
    if item_type == "milestone":
        found = conn.execute(select(Milestone.status).where(Milestone.contract_id == contract_id,
                                                            Milestone.key == item_key)).scalar_one_or_none()
        return found in (MilestoneStatus.DONE, MilestoneStatus.WAIVED)
    if item_type == "installment":
        found = conn.execute(select(Installment.status).where(Installment.contract_id == contract_id,
                                                              Installment.key == item_key)).scalar_one_or_none()
        return found == InstallmentStatus.PAID
    if item_type == "approval":
        amendment_id, _, role = item_key.partition(":")
        row = conn.execute(select(AmendmentRecord.status, AmendmentRecord.record).where(
            AmendmentRecord.contract_id == contract_id, AmendmentRecord.amendment_id == amendment_id)).first()
        if row is None:
            return False
        decisions = (row.record or {}).get("decisions") or []
        return row.status != AmendmentStatus.PENDING or any(isinstance(d, dict) and d.get("role") == role for d in decisions)
    return False


@functools.cache
def _once_insert(dialect: str, table: str):
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    model = Notification if table == "notifications" else Task
    return insert(model).on_conflict_do_nothing(index_elements=["key"])


_STATUS_BY_KEY = select(Notification.status).where(Notification.key == bindparam("key"))
_MARK_SENT = (update(Notification).where(Notification.key == bindparam("which"), Notification.status != SENT)
              .values(status=SENT, sent_at=bindparam("at"), error=None, attempts=Notification.attempts + 1))


def get_notification(session: Session, key: str, *, lock: bool = False) -> Notification:
    row = session.execute(_by_key(Notification, key, lock=lock)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no notification with key {key!r}", slug="notification-not-found")
    return row


def mark_notification_sent(session: Session, key: str) -> Notification:
    """Idempotent: a notification already sent stays as it was."""
    row = get_notification(session, key, lock=True)
    if row.status != SENT:
        row.status = SENT
        row.sent_at = _now()
        row.error = None
        row.attempts += 1
        session.flush()
    return row


def mark_notification_failed(session: Session, key: str, error: str) -> Notification:
    """Record a failed attempt.  A notification already sent is never turned back to failed."""
    row = get_notification(session, key, lock=True)
    if row.status != SENT:
        row.status = FAILED
        row.error = error
        row.attempts += 1
        session.flush()
    return row


def contract_notifications(session: Session, contract_id: str) -> list[Notification]:
    """The contract's notification records, oldest first; NotFound for an unknown contract."""
    if session.get(Contract, contract_id) is None:
        raise NotFound(f"no contract with id {contract_id!r}", slug="contract-not-found")
    return list(
        session.execute(
            select(Notification)
            .where(Notification.contract_id == contract_id)
            .order_by(Notification.created_at, Notification.id)
        ).scalars()
    )


# ---------------------------------------------------------------------- task inbox
def open_task(
    session: Session,
    key: str,
    contract_id: str,
    milestone_key: str | None,
    assignee: str,
    title: str,
    body: str = "",
) -> tuple[Task, bool]:
    """Put a task in ``assignee``'s inbox, once per ``key`` (e.g. "handoff:<contract>:<milestone>").
    Returns the task and whether it was created now; an existing task is returned unchanged."""
    created = _insert_once(
        session,
        Task,
        {
            "key": key, "contract_id": contract_id, "milestone_key": milestone_key, "assignee": assignee,
            "title": title, "body": body, "status": TASK_OPEN, "created_at": _now(),
        },
    )
    return session.execute(_by_key(Task, key)).scalar_one(), created


def get_task(session: Session, task_id: int, *, lock: bool = False) -> Task:
    query = select(Task).where(Task.id == task_id).execution_options(populate_existing=True)
    task = session.execute(query.with_for_update() if lock else query).scalar_one_or_none()
    if task is None:
        raise NotFound(f"no task with id {task_id}", slug="task-not-found")
    return task


def find_task(session: Session, key: str) -> Task | None:
    return session.execute(_by_key(Task, key)).scalar_one_or_none()


def ack_task(session: Session, task_id: int, by: str) -> Task:
    """The assignee (or someone for them) has seen it.  Conflict unless the task is open."""
    task = get_task(session, task_id, lock=True)
    if task.status != TASK_OPEN:
        raise Conflict(f"task {task_id} is {task.status}, not open", slug="task-not-open")
    task.status = TASK_ACKED
    task.acked_at = _now()
    task.acked_by = by
    session.flush()
    return task


def complete_task(session: Session, key: str) -> Task | None:
    """Close the task with this key (its milestone got done).  Idempotent; None if no such task."""
    task = session.execute(_by_key(Task, key, lock=True)).scalar_one_or_none()
    if task is not None and task.status != TASK_DONE:
        task.status = TASK_DONE
        session.flush()
    return task


def list_tasks(
    session: Session, *, assignee: str | None = None, status: str | None = None, limit: int = 100
) -> list[Task]:
    """The inbox, newest first."""
    query = select(Task)
    if assignee is not None:
        query = query.where(Task.assignee == assignee)
    if status is not None:
        query = query.where(Task.status == status)
    return list(session.execute(query.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)).scalars())
