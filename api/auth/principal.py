"""Who is calling: a person (logged in) or a machine (API key), with the roles the policy reads.

Roles (api/auth/policy.py says what each may do):
  * a person's department gives one: ``sales``, ``finance``, ``legal``; production, logistics,
    delivery and any other department give ``delivery`` (they execute milestones);
  * ``manager``: whoever has someone reporting to them or heads a department;
  * ``admin``: from ``users.extra_roles``, or the bootstrap key (``ADMIN_API_KEY``);
  * machines: the roles on their key (``integration:finance``, ``integration:erp``,
    ``integration:crm``, ``admin``).
Roles are read from the organisation on every request, never from the token, so a transfer or a
deactivation takes effect at once.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from models import Department, User

DEPARTMENT_ROLES = {"sales": "sales", "finance": "finance", "legal": "legal"}
DEFAULT_DEPARTMENT_ROLE = "delivery"
PERSON_ROLES = frozenset({"sales", "delivery", "finance", "legal", "manager", "admin"})
INTEGRATION_ROLES = frozenset({"integration:finance", "integration:erp", "integration:crm"})
ALL_ROLES = PERSON_ROLES | INTEGRATION_ROLES
# These see every contract (finance reads all money, legal all documents); everyone else sees
# the contracts they or their team own or execute.
SEE_ALL_CONTRACTS = frozenset({"admin", "finance", "legal"})


@dataclass(frozen=True)
class Principal:
    id: str  # a user id, or "key:<key id>" for a machine
    name: str
    kind: Literal["user", "service"]
    roles: frozenset[str]
    department: str | None = None
    # People whose contracts and milestones this person oversees: their reports (recursively)
    # and the members of the departments they head.  Empty for everyone but managers.
    team: frozenset[str] = frozenset()

    def has(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def sees_all_contracts(self) -> bool:
        return bool(self.roles & SEE_ALL_CONTRACTS)

    @property
    def people(self) -> frozenset[str]:
        """Whose contracts and milestones are this person's business: themselves and their team."""
        return self.team | {self.id} if self.kind == "user" else frozenset()

    @property
    def may_act_for_others(self) -> bool:
        """Admins and machines may name the person they act for (``by``); people act as themselves."""
        return self.is_admin or self.kind == "service"


def principal_for_user(session: Session, user: User) -> Principal:
    roles = {DEPARTMENT_ROLES.get(user.department or "", DEFAULT_DEPARTMENT_ROLE)} if user.department else set()
    roles |= {r for r in (user.extra_roles or "").split() if r in PERSON_ROLES}
    team = _team_of(session, user.id)
    if team:
        roles.add("manager")
    return Principal(id=user.id, name=user.name, kind="user", roles=frozenset(roles),
                     department=user.department, team=frozenset(team))


def _team_of(session: Session, user_id: str) -> set[str]:
    """Reports (recursively) and members of the departments the user heads, with their reports.
    One recursive query: this runs on every request a person makes, so the organisation is not
    loaded row by row (UNION, not UNION ALL: a reporting cycle ends the recursion)."""
    headed = select(Department.key).where(Department.head_id == user_id)
    seed = select(User.id).where(or_(User.manager_id == user_id, User.department.in_(headed)))
    team = seed.cte("team", recursive=True)
    team = team.union(select(User.id).join(team, User.manager_id == team.c.id))
    return set(session.execute(select(team.c.id)).scalars()) - {user_id}


@dataclass
class RequestContext:
    """What the audit trail needs to know about the request being served (api/platform/audit.py)."""

    request_id: str
    method: str
    path: str
    principal: Principal | None = None
    route: str | None = None
    path_params: dict[str, str] = field(default_factory=dict)
    on_behalf_of: str | None = None
    audited: bool = False
    # The server's own id for this request (the caller's X-Request-ID may repeat): the audit
    # entry's unique key; and whether a transaction holding the entry is being committed.
    audit_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    audit_pending: bool = False
    # Writes that must land before the answer leaves (the read model's copy of a change the
    # workflow made), run by the audit middleware in the thread that writes the entry: one thread
    # hop per write request, not two.  Each is given the request's audit entry (or None) and says
    # whether it wrote it in its own transaction.  None: nobody will run them (write them at once).
    before_answer: list[Callable[[dict[str, Any] | None], bool]] | None = None


# Set by the request-context middleware for each request; mutable so a dependency running in a
# worker thread (copied context) can fill it in and the middleware sees it.
CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("request_context", default=None)
