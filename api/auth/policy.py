"""Who may do what: the one table of authorisation rules, keyed by route name.

Every API route and page has exactly one rule here; a route without one is refused (403) and
``tests/test_authorisation.py`` fails, so a new route cannot ship without deciding who may call it.

How a request is judged (the global dependency ``authorize``):
  1. authentication happened in ``api.auth_middleware`` (401 without valid credentials);
  2. if the route names a contract, it must be one the caller may see, else **404** with the same
     answer as for a contract that does not exist, so ids cannot be probed;
  3. the caller needs one of the rule's roles, else **403** with the reason;
  4. the rule's object check (e.g. "only the milestone's owner or their manager completes it"),
     else **403** with the reason.
Rules that depend on a request body (a sales person creates only contracts they own, people act
only as themselves) are checked by the route with ``require_self`` / ``acting_as``.

Who sees a contract: admin, finance (all money), legal (all documents) and the CRM integration see
every contract; a person sees the contracts that they or their team (reports, recursively, and the
departments they head) own or execute a milestone of.  The finance and ERP integrations see none:
they only use their own endpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from api.auth.principal import CURRENT, Principal
from api.platform.database import in_thread
from api.platform.problems import Problem
from models import Contract, Milestone


@dataclass(frozen=True)
class ContractAccess:
    owner: str
    milestone_owners: dict[str, str]


Check = Callable[[Principal, Request, ContractAccess | None], str | None]  # a reason to refuse, or None


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str] = frozenset()
    contract: bool = False  # the path's {contract_id} must be visible to the caller (else 404)
    check: Check | None = None
    public: bool = False  # no authentication at all (health, login)
    action: str = ""  # for the 403 reason: "record payments"


PEOPLE = frozenset({"sales", "delivery", "finance", "legal", "manager", "admin"})
OVERSEERS = frozenset({"manager", "finance", "legal", "admin"})


def _roles(*names: str) -> frozenset[str]:
    return frozenset(names)


# ---------------------------------------------------------------- object checks
def _milestone_actor(p: Principal, request: Request, access: ContractAccess | None) -> str | None:
    """The milestone's owner, anyone above them, or an admin."""
    if p.is_admin or access is None:
        return None
    owner = access.milestone_owners.get(request.path_params.get("key", ""))
    if owner is None:
        return None  # no such milestone: the route answers 404
    if owner in p.people:
        return None
    return f"only the milestone's owner ({owner}) or their manager may do this"


def _milestone_overseer(p: Principal, request: Request, access: ContractAccess | None) -> str | None:
    """A manager above the milestone's owner (or the contract's owner), or an admin."""
    if p.is_admin or access is None:
        return None
    owner = access.milestone_owners.get(request.path_params.get("key", ""))
    if owner is None:
        return None
    if (owner in p.team) or (access.owner in p.team):
        return None
    return f"only a manager of the milestone's owner ({owner}) or of the contract's owner may waive it"


def _contract_overseer(p: Principal, request: Request, access: ContractAccess | None) -> str | None:
    if p.is_admin or access is None:
        return None
    if access.owner in p.team:
        return None
    return f"only a manager of the contract's owner ({access.owner}) may terminate it"


def audit_reader(p: Principal, request: Request, access: ContractAccess | None) -> str | None:
    """Admins, and the contract's owners: its owner and the managers above them."""
    if p.is_admin or access is None:
        return None
    if access.owner in p.people:
        return None
    return "the audit trail is for admins and the contract's owners"


PUBLIC = Rule(public=True)
CONTRACT_READ = Rule(PEOPLE | {"integration:crm"}, contract=True, action="read contracts")
CONTRACT_PEOPLE = Rule(PEOPLE, contract=True, action="act on contracts")
ADMIN = Rule(_roles("admin"), action="administer")
ANY_PERSON = Rule(PEOPLE, action="use this")

POLICY: dict[str, Rule] = {
    # -- meta and login
    "healthz": PUBLIC,
    "readyz": PUBLIC,
    "issue_token": PUBLIC,
    "whoami": Rule(PEOPLE | {"integration:finance", "integration:erp", "integration:crm"}),
    "change_password": Rule(PEOPLE, action="change passwords"),
    "create_key": ADMIN,
    "list_keys": ADMIN,
    "revoke_key": ADMIN,
    "playbooks": Rule(PEOPLE | {"integration:crm"}, action="read playbooks"),
    # -- contracts
    "create_contract": Rule(_roles("sales", "manager", "admin", "integration:crm"), action="create contracts"),
    "list_contracts": Rule(PEOPLE | {"integration:crm"}, action="list contracts"),
    "get_contract": CONTRACT_READ,
    "contract_events": CONTRACT_READ,
    "record_payment": Rule(_roles("finance", "admin"), contract=True, action="record payments"),
    "complete_milestone": Rule(PEOPLE, contract=True, check=_milestone_actor, action="complete milestones"),
    "report_progress": Rule(PEOPLE, contract=True, check=_milestone_actor, action="report progress"),
    "waive_milestone": Rule(_roles("manager", "admin"), contract=True, check=_milestone_overseer,
                            action="waive milestones"),
    "terminate_contract": Rule(_roles("manager", "admin"), contract=True, check=_contract_overseer,
                               action="terminate contracts"),
    # -- amendments: anyone involved may ask; the workflow checks the approver's role and the requester
    "request_amendment": CONTRACT_PEOPLE,
    "list_amendments": CONTRACT_PEOPLE,
    "get_amendment": CONTRACT_PEOPLE,
    "approve_amendment": CONTRACT_PEOPLE,
    "reject_amendment": CONTRACT_PEOPLE,
    "withdraw_amendment": CONTRACT_PEOPLE,
    "contract_versions": CONTRACT_PEOPLE,
    # -- documents and communications
    "contract_documents": CONTRACT_PEOPLE,
    "document_content": CONTRACT_PEOPLE,
    "upload_document": Rule(_roles("sales", "manager", "legal", "admin"), contract=True, action="upload documents"),
    "download_document": CONTRACT_PEOPLE,
    "document_versions": CONTRACT_PEOPLE,
    "list_approvals": CONTRACT_PEOPLE,
    "add_communication": CONTRACT_PEOPLE,
    "list_communications": CONTRACT_PEOPLE,
    "search_communications": ANY_PERSON,
    # -- audit
    "list_audit": Rule(PEOPLE, contract=False, action="read the audit trail"),
    # -- organisation
    "create_user": ADMIN,
    "list_users": ANY_PERSON,
    "get_user": ANY_PERSON,
    "update_user": ADMIN,
    "create_department": ADMIN,
    "list_departments": ANY_PERSON,
    "get_department": ANY_PERSON,
    "replace_department": ADMIN,
    # -- inbox: people see their own tasks (admins anyone's)
    "list_tasks": ANY_PERSON,
    "ack_task": ANY_PERSON,
    "contract_notifications": CONTRACT_PEOPLE,
    # -- integrations: machines on their own endpoint (and the people who stand in for them)
    "finance_payments": Rule(_roles("integration:finance", "finance", "admin"), action="post finance statements"),
    "erp_progress": Rule(_roles("integration:erp", "admin"), action="post ERP progress"),
    # -- outgoing webhook subscriptions
    "event_types": ANY_PERSON,
    "ping_subscription": ADMIN,
    "create_subscription": ADMIN,
    "list_subscriptions": ADMIN,
    "get_subscription": ADMIN,
    "update_subscription": ADMIN,
    "delete_subscription": ADMIN,
    "list_deliveries": ADMIN,
    # -- analytics: for the people who review the business
    "fulfilment_cycle": Rule(OVERSEERS, action="read analytics"),
    "stage_times": Rule(OVERSEERS, action="read analytics"),
    "receivables": Rule(OVERSEERS, action="read analytics"),
    "cost_overrun": Rule(OVERSEERS, action="read analytics"),
    "customer_satisfaction": Rule(OVERSEERS, action="read analytics"),
    "bottlenecks": Rule(OVERSEERS, action="read analytics"),
    "quarterly_report": Rule(OVERSEERS, action="read analytics"),
    "quarterly_report_csv": Rule(OVERSEERS, action="read analytics"),
    # -- the dashboard (pages scope their lists themselves)
    "ui_home": ANY_PERSON,
    "ui_login": PUBLIC,
    "ui_login_submit": PUBLIC,
    "ui_logout": PUBLIC,
    "ui_contracts": ANY_PERSON,
    "ui_contract": Rule(PEOPLE, contract=True, action="read contracts"),
    "ui_tasks": ANY_PERSON,
    "ui_overdue": ANY_PERSON,
    "ui_analytics": Rule(OVERSEERS, action="read analytics"),
    "ui_quarterly": Rule(OVERSEERS, action="read analytics"),
}


def rule_for(name: str) -> Rule | None:
    return POLICY.get(name)


# ---------------------------------------------------------------- visibility
def contract_access(session: Session, contract_id: str) -> ContractAccess | None:
    found = session.execute(select(Contract.owner, Contract.version).where(Contract.id == contract_id)).first()
    if found is None:
        return None
    owner, version = found
    rows: list[tuple[str, str]] = [
        (k, o) for k, o in session.execute(select(Milestone.key, Milestone.owner).where(Milestone.contract_id == contract_id))]
    if not rows and not version:
        # Just created: the workflow has not written its milestones yet (a fraction of a second),
        # and an executor would meet a 404 on the contract she was just given.  The row's spec
        # names them until then.
        spec = session.execute(select(Contract.spec).where(Contract.id == contract_id)).scalar_one_or_none()
        listed = spec.get("milestones") if isinstance(spec, dict) else None
        rows = [(m["key"], m["owner"]) for m in listed or []
                if isinstance(m, dict) and isinstance(m.get("key"), str) and isinstance(m.get("owner"), str)]
    return ContractAccess(owner=owner, milestone_owners={k: o for k, o in rows})


def can_see(p: Principal, access: ContractAccess | None) -> bool:
    if p.sees_all_contracts or p.has("integration:crm"):
        return True
    if access is None or p.kind != "user":
        return False
    people = p.people
    return access.owner in people or any(o in people for o in access.milestone_owners.values())


def visible_contracts(p: Principal) -> ColumnElement[bool] | None:
    """A WHERE clause on ``Contract`` keeping what the caller may see (None: everything)."""
    if p.sees_all_contracts or p.has("integration:crm"):
        return None
    if p.kind != "user":
        return Contract.id.is_(None)  # nothing
    people = sorted(p.people)
    executes = select(Milestone.contract_id).where(Milestone.owner.in_(people))
    return or_(Contract.owner.in_(people), Contract.id.in_(executes))


def not_found(contract_id: str) -> Problem:
    # Word for word what ContractService answers for an id that does not exist.
    return Problem(404, f"no contract with id {contract_id!r}", slug="contract-not-found")


def forbidden(reason: str) -> Problem:
    return Problem(403, reason, slug="forbidden")


# ---------------------------------------------------------------- the global dependency
async def authorize(request: Request) -> None:
    route = request.scope.get("route")
    name = getattr(route, "name", None)
    rule = rule_for(name) if name else None
    if rule is None:
        raise forbidden(f"route {name!r} has no authorisation rule")  # deny by default
    if rule.public:
        return
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # the middleware lets only public paths through unauthenticated
        from api.auth.service import Unauthenticated

        raise Unauthenticated("authentication required")
    ctx = CURRENT.get()
    if ctx is not None:
        ctx.route = name
        ctx.path_params = dict(request.path_params)
    access: ContractAccess | None = None
    if rule.contract:
        contract_id = request.path_params["contract_id"]
        # Admins pass every object check: they need no read-model row, so their writes keep working
        # through a database outage (the workflow judges them alone, as before authorisation).
        needs_row = not (principal.sees_all_contracts or principal.has("integration:crm")) or (
            rule.check is not None and not principal.is_admin)
        if needs_row:
            # DatabaseStalled (no answer in time) is a 503 like any unreachable database.
            access = await in_thread(request.app.state.settings.database_call_seconds, _load_access, request,
                                     contract_id)
        if not can_see(principal, access):
            raise not_found(contract_id)
    if not principal.has(*rule.roles):
        held = ", ".join(sorted(principal.roles)) or "no role"
        raise forbidden(f"{held} may not {rule.action or name}")
    if rule.check is not None:
        reason = rule.check(principal, request, access)
        if reason:
            raise forbidden(reason)


def _load_access(request: Request, contract_id: str) -> ContractAccess | None:
    with request.app.state.sessions() as session:
        return contract_access(session, contract_id)


# ---------------------------------------------------------------- body-level checks for routes
def principal_of(request: Request) -> Principal:
    return request.state.principal


def acting_as(p: Principal, claimed: str | None) -> str:
    """The person a change is made by.  People act as themselves (naming someone else is a 403);
    admins and machines may name the person they act for, recorded with their own identity."""
    if claimed and claimed != p.id:
        if not p.may_act_for_others:
            raise forbidden(f"you are {p.id}: you cannot act as {claimed}")
        ctx = CURRENT.get()
        if ctx is not None:
            ctx.on_behalf_of = claimed
        return claimed
    return p.id


def require_owner_in_reach(p: Principal, owner: str) -> None:
    """A sales person creates contracts they own; a manager, for their team too."""
    if p.may_act_for_others:
        return
    if owner not in p.people:
        raise forbidden(f"you may create contracts for yourself or your team, not for {owner}")


def api_routes(app) -> list[tuple[str, str, frozenset[str]]]:
    """(name, full path, methods) of every route the app serves through FastAPI, for the
    authorisation matrix test and the startup check."""
    from fastapi.routing import APIRoute

    # Read from the routers the app includes (api/main.py ``include_routers``), whose routes carry
    # their full paths: FastAPI's own list of an app's routes nests included routers privately.
    routes = [r for router in app.state.routers for r in router.routes] + list(app.router.routes)
    return [(r.name, r.path, frozenset(r.methods or ())) for r in routes if isinstance(r, APIRoute)]


def unruled_routes(app) -> list[str]:
    return sorted({f"{name} {path}" for name, path, _m in api_routes(app) if name not in POLICY})


def stamp(request: Request, body, field: str = "by"):
    """The body with ``field`` (who acts) set from the caller: see ``acting_as``."""
    claimed = getattr(body, field) if field in body.model_fields_set else None
    return body.model_copy(update={field: acting_as(principal_of(request), claimed)})
