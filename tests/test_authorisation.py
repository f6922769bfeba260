"""Authorisation: every route x every role, against the running service (real worker, database).

The expectations below are written from the business rules (issue #5), not read from
``api/auth/policy.py``: a route missing here, or a rule missing there, fails the suite.

Roles in the matrix:
  admin      the bootstrap admin key            owner      li.wei, sales, owns the contract
  manager    zhang.min, li.wei's manager        colleague  another sales person (made here)
  delivery   a delivery person with no part in the contract
  executor   the person who owns the contract's customer acceptance milestone: wang.fang, who heads
             delivery, so a manager (of her department) as well
  finance    sun.li                             legal      liu.yang
  crm / erp / feed   API keys of the CRM, ERP and finance-feed integrations
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime, timezone

import httpx
import pytest

from api.auth.policy import POLICY, api_routes, unruled_routes
from api.main import create_app
from tests.helpers import contract_request, login

PROBLEM = "application/problem+json"
ROLES = ["admin", "owner", "manager", "colleague", "delivery", "executor", "finance", "legal", "crm", "erp", "feed"]
PEOPLE = {"admin", "owner", "manager", "colleague", "delivery", "executor", "finance", "legal"}
# Who sees li.wei's contract: admin, finance, legal, the CRM; li.wei, his manager, whoever executes part of it.
SEES = {"admin", "owner", "manager", "executor", "finance", "legal", "crm"}
OVERSEERS = {"admin", "manager", "executor", "finance", "legal"}
PUBLIC = {"healthz", "readyz", "issue_token", "ui_login", "ui_login_submit", "ui_logout"}


def on_contract(allowed: set[str]) -> dict[str, str]:
    """A route on li.wei's contract: 404 for whoever cannot see it, else ok or 403."""
    return {r: ("404" if r not in SEES else "ok" if r in allowed else "403") for r in ROLES}


def anywhere(allowed: set[str]) -> dict[str, str]:
    return {r: "ok" if r in allowed else "403" for r in ROLES}


EXPECT: dict[str, dict[str, str]] = {
    "whoami": anywhere(set(ROLES)),
    "change_password": anywhere(PEOPLE),
    "create_key": anywhere({"admin"}),
    "list_keys": anywhere({"admin"}),
    "revoke_key": anywhere({"admin"}),
    "playbooks": anywhere(PEOPLE | {"crm"}),
    "create_contract": anywhere({"admin", "owner", "manager", "executor", "colleague", "crm"}),
    "list_contracts": anywhere(PEOPLE | {"crm"}),
    "get_contract": on_contract(SEES),
    "contract_events": on_contract(SEES),
    "record_payment": on_contract({"admin", "finance"}),
    "complete_milestone": on_contract({"admin", "owner", "manager"}),  # order review is li.wei's
    "report_progress": on_contract({"admin", "owner", "manager"}),
    "waive_milestone": on_contract({"admin", "manager"}),
    "terminate_contract": on_contract({"admin", "manager"}),
    "request_amendment": on_contract(PEOPLE),
    "list_amendments": on_contract(PEOPLE),
    "get_amendment": on_contract(PEOPLE),
    "approve_amendment": on_contract(PEOPLE),  # the workflow then checks the approver's role
    "reject_amendment": on_contract(PEOPLE),
    "withdraw_amendment": on_contract(PEOPLE),
    "contract_versions": on_contract(PEOPLE),
    "contract_documents": on_contract(PEOPLE),
    "document_content": on_contract(PEOPLE),
    "upload_document": on_contract({"admin", "owner", "manager", "executor", "legal"}),
    "download_document": on_contract(PEOPLE),
    "document_versions": on_contract(PEOPLE),
    "list_approvals": on_contract(PEOPLE),
    "add_communication": on_contract(PEOPLE),
    "list_communications": on_contract(PEOPLE),
    "search_communications": anywhere(PEOPLE),
    "list_audit": anywhere({"admin"}),  # without ?contract=: people must name a contract they own (test_audit.py)
    "create_user": anywhere({"admin"}),
    "list_users": anywhere(PEOPLE),
    "get_user": anywhere(PEOPLE),
    "update_user": anywhere({"admin"}),
    "create_department": anywhere({"admin"}),
    "list_departments": anywhere(PEOPLE),
    "get_department": anywhere(PEOPLE),
    "replace_department": anywhere({"admin"}),
    "list_tasks": anywhere(PEOPLE),
    "ack_task": anywhere(PEOPLE),
    "contract_notifications": on_contract(PEOPLE),
    "finance_payments": anywhere({"admin", "finance", "feed"}),
    "erp_progress": anywhere({"admin", "erp"}),
    "event_types": anywhere(PEOPLE),
    "ping_subscription": anywhere({"admin"}),
    "create_subscription": anywhere({"admin"}),
    "list_subscriptions": anywhere({"admin"}),
    "get_subscription": anywhere({"admin"}),
    "update_subscription": anywhere({"admin"}),
    "delete_subscription": anywhere({"admin"}),
    "list_deliveries": anywhere({"admin"}),
    **{name: anywhere(OVERSEERS) for name in (
        "fulfilment_cycle", "stage_times", "receivables", "cost_overrun", "customer_satisfaction", "bottlenecks",
        "quarterly_report", "quarterly_report_csv")},
    "ui_home": anywhere(PEOPLE),
    "ui_contracts": anywhere(PEOPLE),
    "ui_contract": on_contract(PEOPLE),
    "ui_tasks": anywhere(PEOPLE),
    "ui_overdue": anywhere(PEOPLE),
    "ui_analytics": anywhere(OVERSEERS),
    "ui_quarterly": anywhere(OVERSEERS),
}


def test_every_route_has_a_rule_and_an_expectation():
    app = create_app()
    names = {name for name, _path, _m in api_routes(app)}
    assert unruled_routes(app) == [], "routes without an authorisation rule in api/auth/policy.py"
    assert sorted(names - set(EXPECT) - PUBLIC) == [], "routes missing from this test's matrix"
    assert sorted(set(POLICY) - names) == [], "rules for routes that do not exist"
    assert sorted(set(EXPECT) - names) == [], "expectations for routes that do not exist"
    assert {n for n in names if POLICY[n].public} == {n for n in names if n in PUBLIC}


def fill(path: str, ids: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1)
        if name == "key":
            return ids["department"] if path.startswith("/departments") else "order_review"
        return ids.get(name, "nothing-here")

    return re.sub(r"\{(\w+)(?::\w+)?\}", one, path)


def routes_to_try(app) -> list[tuple[str, str, str]]:
    out = []
    for name, path, methods in api_routes(app):
        for method in sorted(methods - {"HEAD"}):
            out.append((name, method, path))
    return sorted(out)


async def test_without_credentials_only_health_docs_and_login_answer(api_service):
    app = create_app()
    ids = {"contract_id": "c-1", "user_id": "li.wei", "department": "sales", "task_id": "1"}
    async with httpx.AsyncClient(base_url=api_service.url, timeout=30) as c:
        for name, method, path in routes_to_try(app):
            r = await c.request(method, fill(path, ids), json={} if method in ("POST", "PUT", "PATCH") else None,
                                headers={"accept": "application/json"})
            if name in PUBLIC:
                assert r.status_code != 401 or name in ("issue_token", "ui_login_submit"), (name, r.status_code)
                continue
            assert r.status_code == 401, (name, method, path, r.status_code, r.text[:200])
            assert r.headers["content-type"] == PROBLEM and r.json()["status"] == 401
            assert r.headers["www-authenticate"].startswith("Bearer")
        for path in ("/healthz", "/docs", "/openapi.json", "/ui/login", "/static/dashboard.css"):
            r = await c.get(path)
            assert r.status_code in (200, 404) and r.status_code != 401, path
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/docs")).status_code == 200
        # Wrong credentials are a 401 too, never "nobody".
        for headers in ({"authorization": "Bearer nonsense"}, {"authorization": "Bearer ck_abc_def"},
                        {"x-api-key": "ck_abc_def"}, {"authorization": "Basic !!!"},
                        {"authorization": "Digest x"}):
            r = await c.get("/contracts", headers=headers)
            assert r.status_code == 401 and r.headers["content-type"] == PROBLEM, headers
        r = await c.post("/auth/token", data={"username": "li.wei", "password": "wrong"})
        assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
        r = await c.post("/auth/token", data={"username": "no.such.person", "password": "wrong"})
        assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"


async def principals(service) -> dict[str, dict[str, str]]:
    """An Authorization header for every role in the matrix."""
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as admin:
        headers: dict[str, dict[str, str]] = {"admin": {"authorization": f"Bearer {service.settings.admin_api_key}"}}
        for role, name in (("crm", "crm"), ("erp", "erp"), ("feed", "finance-feed")):
            key_role = {"crm": "integration:crm", "erp": "integration:erp", "feed": "integration:finance"}[role]
            r = await admin.post("/api-keys", json={"name": name, "roles": [key_role]})
            assert r.status_code == 201, r.text
            headers[role] = {"authorization": f"Bearer {r.json()['key']}"}
        for role, dept in (("colleague", "sales"), ("delivery", "delivery")):
            uid = f"{role}.{uuid.uuid4().hex[:6]}"
            r = await admin.post("/users", json={"id": uid, "name": uid, "email": f"{uid}@example.com",
                                                 "department": dept})
            assert r.status_code == 201, r.text
            r = await admin.post("/auth/password", json={"user_id": uid, "new_password": "a long password"})
            assert r.status_code == 204, r.text
            headers[role] = await login(service.url, uid, "a long password")
    for role, user in (("owner", "li.wei"), ("manager", "zhang.min"), ("finance", "sun.li"), ("legal", "liu.yang")):
        headers[role] = await login(service.url, user)
    return headers


async def make_contract(service) -> tuple[str, str]:
    """li.wei's contract, and who executes its customer acceptance (a person other than li.wei)."""
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as admin:
        r = await admin.post("/contracts", json=contract_request(datetime.now(timezone.utc)))
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        for _ in range(100):  # the read model learns the milestones' owners from the projection
            r = await admin.get(f"/contracts/{cid}/events")
            rows = (await admin.get("/contracts", params={"owner": "li.wei", "limit": 500})).json()["items"]
            state = (await admin.get(f"/contracts/{cid}")).json()
            owners = {m["key"]: m["owner"] for m in state["milestones"]}
            if any(x["id"] == cid for x in rows) and r.json():
                break
            await asyncio.sleep(0.2)
        executor = owners["customer_acceptance"]
        assert executor == "wang.fang", owners
        await asyncio.sleep(1.0)  # let the projection land the milestone rows
        return cid, executor


def verdict(name: str, r: httpx.Response) -> str:
    if r.status_code == 401:
        return "401"
    if r.status_code == 403 and r.headers.get("content-type") == PROBLEM and r.json().get("type") == "/problems/forbidden":
        return "403"
    if r.status_code == 404 and r.headers.get("content-type") == PROBLEM and \
            r.json().get("type") == "/problems/contract-not-found":
        return "404"
    return "ok"


async def test_the_matrix_every_route_every_role(api_service):
    app = create_app()
    headers = await principals(api_service)
    cid, executor = await make_contract(api_service)
    headers["executor"] = await login(api_service.url, executor)
    ids = {"contract_id": cid, "user_id": "li.wei", "department": "sales", "task_id": "999999",
           "amendment_id": "am-none", "document_id": "doc-none", "subscription_id": "sub-none", "key_id": "key-none"}
    # Writes that would end the contract or change people go last, so the rest see a live contract.
    order = {"terminate_contract": 2, "waive_milestone": 1, "complete_milestone": 1}
    tries = sorted(routes_to_try(app), key=lambda t: (order.get(t[0], 0), t))
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=api_service.url, timeout=60) as c:
        for name, method, path in tries:
            if name in PUBLIC:
                continue
            for role in ROLES:
                body: dict[str, str] | None
                if name == "change_password" and role != "admin":
                    body = {"new_password": "x"}  # 422: too short; a person may only change their own
                else:
                    body = {} if method in ("POST", "PUT", "PATCH") else None
                r = await c.request(method, fill(path, ids), json=body,
                                    headers={**headers[role], "accept": "application/json"})
                got, want = verdict(name, r), EXPECT[name][role]
                if got != want:
                    wrong.append(f"{role:9} {method:6} {path:60} want {want} got {r.status_code} {r.text[:120]}")
    assert wrong == [], "\n" + "\n".join(wrong)


async def test_a_colleague_cannot_reach_a_contract_by_guessing_its_id(api_service):
    """Done when: a sales user cannot read, pay, complete or amend a colleague's contract by guessing
    its id (404), including through list filters, documents, events and search; a finance user can
    record a payment but not approve scope."""
    admin = api_service.base_url
    async with httpx.AsyncClient(base_url=admin, timeout=30) as c:
        uid = f"colleague.{uuid.uuid4().hex[:6]}"
        assert (await c.post("/users", json={"id": uid, "name": uid, "email": f"{uid}@example.com",
                                             "department": "sales"})).status_code == 201
        assert (await c.post("/auth/password", json={"user_id": uid, "new_password": "a long password"})).status_code == 204
    li, colleague = await login(api_service.url, "li.wei"), await login(api_service.url, uid, "a long password")
    fin, legal = await login(api_service.url, "sun.li"), await login(api_service.url, "liu.yang")
    body = contract_request(datetime.now(timezone.utc))
    crm_id = body["customer"]["external_id"]
    async with httpx.AsyncClient(base_url=api_service.url, timeout=30) as c:
        r = await c.post("/contracts", json=body, headers=li)
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        # The same external_id answers its contract only to someone who may see it (an id is not leaked)
        ext = f"ERP-{uuid.uuid4().hex[:8]}"
        other = {**contract_request(datetime.now(timezone.utc)), "external_id": ext}
        mine = await c.post("/contracts", json=other, headers=li)
        assert mine.status_code == 201, mine.text
        again = await c.post("/contracts", json=other, headers=li)
        assert again.status_code == 200 and again.json()["id"] == mine.json()["id"]
        theirs = await c.post("/contracts", json={**other, "owner": uid}, headers=colleague)
        assert theirs.status_code == 409 and theirs.headers["content-type"] == PROBLEM, theirs.text
        assert mine.json()["id"] not in theirs.text and theirs.json()["type"].endswith("/external-id-taken")
        # li.wei may not create a contract for someone else
        r = await c.post("/contracts", json={**contract_request(datetime.now(timezone.utc)), "owner": uid}, headers=li)
        assert r.status_code == 403 and "for yourself or your team" in r.json()["detail"]

        unknown = "0" * 16
        for who_id in (cid, unknown):  # a colleague's contract and no contract answer the same
            for method, path, payload in (
                ("GET", f"/contracts/{who_id}", None),
                ("GET", f"/contracts/{who_id}/events", None),
                ("GET", f"/contracts/{who_id}/documents", None),
                ("GET", f"/contracts/{who_id}/versions", None),
                ("GET", f"/contracts/{who_id}/notifications", None),
                ("GET", f"/contracts/{who_id}/amendments", None),
                ("POST", f"/contracts/{who_id}/payments", {"reference": "GUESS-1", "amount": "1.00", "currency": "CNY",
                                                           "received_at": datetime.now(timezone.utc).isoformat()}),
                ("POST", f"/contracts/{who_id}/milestones/order_review/complete", {}),
                ("POST", f"/contracts/{who_id}/amendments", {"reason": "x", "changes": [
                    {"kind": "move_due", "key": "shipping", "shift": "P1D"}]}),
                ("POST", f"/contracts/{who_id}/terminate", {"reason": "x"}),
            ):
                r = await c.request(method, path, json=payload, headers=colleague)
                assert r.status_code == 404, (method, path, r.status_code, r.text)
                assert r.json()["detail"] == f"no contract with id {who_id!r}"
        # ...nor through list filters and search
        for params in ({"owner": "li.wei"}, {"customer": crm_id}, {"customer": body["customer"]["name"]}, {}):
            items = (await c.get("/contracts", params={**params, "limit": 500}, headers=colleague)).json()["items"]
            assert cid not in [x["id"] for x in items], params
        items = (await c.get("/contracts", params={"customer": crm_id}, headers=li)).json()["items"]
        assert [x["id"] for x in items] == [cid]
        # ...nor through the dashboard
        r = await c.get(f"/ui/contracts/{cid}", headers={**colleague, "accept": "application/json"})
        assert r.status_code == 404
        r = await c.get("/ui/contracts", params={"q": cid}, headers=colleague)
        assert r.status_code == 200 and f'data-id="{cid}"' not in r.text
        r = await c.get("/ui/contracts", params={"q": cid}, headers=li)
        assert r.status_code == 200 and f'data-id="{cid}"' in r.text
        # The first characters of an id find it too (as copied from a notice); a colleague still sees nothing.
        r = await c.get("/ui/contracts", params={"q": cid[:8].upper()}, headers=li)
        assert r.status_code == 200 and f'data-id="{cid}"' in r.text
        r = await c.get("/ui/contracts", params={"q": cid[:8]}, headers=colleague)
        assert r.status_code == 200 and f'data-id="{cid}"' not in r.text

        # The owner cannot record money: that is finance's job (403 with the reason, on a visible contract).
        pay = {"reference": f"BANK-{uuid.uuid4().hex[:6]}", "amount": "1000.00", "currency": "CNY",
               "received_at": datetime.now(timezone.utc).isoformat()}
        r = await c.post(f"/contracts/{cid}/payments", json=pay, headers=li)
        assert r.status_code == 403 and r.json()["detail"] == "sales may not record payments"
        # Finance can; the workflow records who did it.
        r = await c.post(f"/contracts/{cid}/payments", json=pay, headers=fin)
        assert r.status_code == 200 and r.json()["applied"] is True, r.text
        # People act as themselves: naming someone else is refused.
        r = await c.post(f"/contracts/{cid}/payments", json={**pay, "reference": "BANK-X", "by": "zhou.qiang"},
                         headers=fin)
        assert r.status_code == 403 and "cannot act as zhou.qiang" in r.json()["detail"]

        # A scope change (a milestone added) needs legal: finance cannot approve it.
        r = await c.post(f"/contracts/{cid}/amendments", headers=li, json={"reason": "extra audit", "changes": [
            {"kind": "add_milestone", "milestone": {"key": "audit", "name": "Audit", "kind": "custom",
                                                   "owner": "li.wei", "department": "sales", "due_after": "P5D"}}]})
        assert r.status_code == 201, r.text
        aid = r.json()["id"]
        assert r.json()["required_roles"] == ["legal"]
        r = await c.post(f"/contracts/{cid}/amendments/{aid}/approve", json={"role": "legal"}, headers=fin)
        assert r.status_code == 403, r.text
        assert (await c.get(f"/contracts/{cid}/amendments/{aid}", headers=li)).json()["status"] == "pending"
        r = await c.post(f"/contracts/{cid}/amendments/{aid}/approve", json={"role": "legal"}, headers=legal)
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text

        # Each change carries the actor's identity into the workflow's event log.
        for _ in range(50):
            events = (await c.get(f"/contracts/{cid}/events", headers=li)).json()
            actors = {e["type"]: e["actor"] for e in events}
            if "amendment.applied" in actors:
                break
            await asyncio.sleep(0.2)
        assert actors["payment.received"] == "sun.li"
        assert actors["amendment.requested"] == "li.wei"
        assert actors["amendment.approved"] == "liu.yang"


async def test_idempotency_keys_belong_to_their_caller(api_service):
    """Two callers sending the same Idempotency-Key each get their own answer (never the other's)."""
    li, boss = await login(api_service.url, "li.wei"), await login(api_service.url, "zhang.min")
    key = f"same-key-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=api_service.url, timeout=30) as c:
        r1 = await c.post("/contracts", json=contract_request(datetime.now(timezone.utc)),
                          headers={**li, "Idempotency-Key": key})
        r2 = await c.post("/contracts", json=contract_request(datetime.now(timezone.utc), owner="zhang.min"),
                          headers={**boss, "Idempotency-Key": key})
        assert r1.status_code == 201 and r2.status_code == 201, (r1.text, r2.text)
        assert r1.json()["id"] != r2.json()["id"]
        assert "idempotent-replayed" not in r2.headers


async def test_api_keys_are_shown_once_and_revoked_at_once(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as admin:
        r = await admin.post("/api-keys", json={"name": "erp", "roles": ["integration:erp"]})
        assert r.status_code == 201
        key, key_id = r.json()["key"], r.json()["id"]
        assert key.startswith(f"ck_{key_id}_")
        listed = (await admin.get("/api-keys")).json()
        assert key_id in [k["id"] for k in listed] and "key" not in listed[0]
        assert (await admin.post("/api-keys", json={"name": "x", "roles": ["superuser"]})).status_code == 422
    async with httpx.AsyncClient(base_url=api_service.url, timeout=30) as c:
        for headers in ({"authorization": f"Bearer {key}"}, {"x-api-key": key}):
            me = await c.get("/auth/me", headers=headers)
            assert me.status_code == 200 and me.json()["roles"] == ["integration:erp"], me.text
        r = await c.get("/contracts", headers={"x-api-key": key})
        assert r.status_code == 403
        async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as admin:
            assert (await admin.post(f"/api-keys/{key_id}/revoke")).status_code == 200
        r = await c.get("/auth/me", headers={"x-api-key": key})
        assert r.status_code == 401 and r.json()["detail"] == "unknown or revoked API key"


def test_production_settings_refuse_default_credentials():
    from pydantic import ValidationError

    from core.settings import Settings

    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(environment="production")
    with pytest.raises(ValidationError, match="demo organisation"):
        Settings(environment="production", jwt_secret="s" * 40, seed_demo_org=True)
    with pytest.raises(ValidationError, match="default ADMIN_PASSWORD"):
        Settings(environment="production", jwt_secret="s" * 40, admin_password="admin")
    Settings(environment="production", jwt_secret="s" * 40, admin_password="a real one, long enough")


def test_a_new_contracts_executors_reach_it_before_its_milestones_are_written(sessions):
    """Between the API's row and the workflow's first write (a fraction of a second) the row's
    spec names the milestone owners: wang.fang, given customer acceptance, is not told 404."""
    from api.auth.policy import contract_access
    from models.repository import new_contract_row
    from tests.helpers import make_spec

    now = datetime.now(timezone.utc)
    spec = make_spec(now)
    with sessions.begin() as session:
        new_contract_row(session, spec, workflow_id=f"contract-{spec.contract_id}", status="starting", version=0, now=now)
    with sessions() as session:
        access = contract_access(session, spec.contract_id)
    assert access is not None and access.owner == "li.wei"
    assert access.milestone_owners == {m.key: m.owner for m in spec.milestones}
    assert "customer_acceptance" in access.milestone_owners
    with sessions() as session:  # once projected, the milestone rows alone decide (an amendment may move them)
        from models import Contract

        session.get(Contract, spec.contract_id).version = 1
        session.commit()
        assert contract_access(session, spec.contract_id).milestone_owners == {}
