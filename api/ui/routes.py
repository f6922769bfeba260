"""The web dashboard for people: server-rendered Jinja2 pages under ``/ui`` (templates/pages),
Chinese or English (``?lang=zh|en``, remembered; else Accept-Language).  Kept out of the OpenAPI
document: these are pages, not API.  People log in at ``/ui/login`` with the same password as
``POST /auth/token``; the session cookie holds the same access token (api/auth/service.py)."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from api.analytics import service as a
from api.analytics.routes import get_analytics
from api.auth import service as auth
from api.contracts.service import ContractService, get_contract_service
from api.platform.database import in_thread
from api.platform.problems import Problem
from api.ui import service as p

router = APIRouter(prefix="/ui", include_in_schema=False)
Ctx = Annotated[p.UiContext, Depends(p.ui_context)]


def _redirect(ctx: p.UiContext, url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    for name, value in ctx.set_cookies.items():
        response.set_cookie(name, value, max_age=365 * 86400, httponly=True, samesite="lax")
    for name in ctx.clear_cookies:
        response.delete_cookie(name)
    return response


@router.get("", name="ui_home")
@router.get("/", name="ui_home")
def home(ctx: Ctx):
    return _redirect(ctx, "/ui/contracts")


@router.get("/login", name="ui_login")
def login(request: Request, ctx: Ctx, next: str = "/ui/contracts"):
    """The login form."""
    return p.render(request, ctx, "login.html", next=_safe_next(next), error=None)


@router.post("/login", name="ui_login_submit")
async def login_submit(request: Request, ctx: Ctx):
    """Check the password, set the session cookie (the access token), go on to ``next``."""
    form = await request.form()
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "/ui/contracts")))

    def work():
        with request.app.state.sessions() as session:
            return auth.login(session, request.app.state.settings, request.app.state, username, password,
                              request.client.host if request.client else None)

    try:
        token, expires = await run_in_threadpool(work)
    except auth.Unauthenticated:
        return p.render(request, ctx, "login.html", status_code=401, next=target, error=ctx.t("login_failed"))
    response = _redirect(ctx, target)
    response.set_cookie(auth.SESSION_COOKIE, token, max_age=request.app.state.settings.access_token_minutes * 60,
                        httponly=True, samesite="lax", secure=request.url.scheme == "https")
    return response


@router.get("/logout", name="ui_logout")
def logout(request: Request, ctx: Ctx):
    token = request.cookies.get(auth.SESSION_COOKIE)
    if token:  # the token itself ends, not only the browser's copy of it
        state = request.app.state
        with state.sessions() as session:
            auth.log_out(session, state.settings, state, token)
    response = _redirect(ctx, "/ui/login")
    response.delete_cookie(auth.SESSION_COOKIE)
    return response


def _safe_next(target: str) -> str:
    # Only our own pages: never an open redirect to another site.
    return target if target.startswith("/ui") and not target.startswith("//") else "/ui/contracts"


@router.get("/contracts", name="ui_contracts")
def contracts(
    request: Request,
    ctx: Ctx,
    status: Annotated[str | None, Query(max_length=40)] = None,
    owner: Annotated[str | None, Query(max_length=100)] = None,
    customer: Annotated[str | None, Query(max_length=200)] = None,
    playbook: Annotated[str | None, Query(max_length=60)] = None,
    overdue: bool = False,
    q: Annotated[str | None, Query(max_length=200)] = None,
    page: Annotated[int, Query(ge=1, le=100000)] = 1,
):
    f = p.ListFilters(status=status or None, owner=owner or None, customer=customer or None,
                      playbook=playbook or None, overdue=overdue, q=q or None, page=page)
    with request.app.state.sessions() as session:
        rows, total = p.list_contracts(session, f, ctx.principal)
        owners, playbooks = p.owners(session), p.playbooks(session)
    pages = max(1, (total + p.PAGE_SIZE - 1) // p.PAGE_SIZE)
    return p.render(request, ctx, "contracts.html", rows=rows, total=total, f=f, pages=pages, owners=owners,
                    playbooks=playbooks, statuses=["active", "completed", "terminated", "expired"],
                    now=datetime.now(timezone.utc))


@router.get("/contracts/{contract_id}", name="ui_contract")
async def contract(request: Request, ctx: Ctx, contract_id: str,
                   service: Annotated[ContractService, Depends(get_contract_service)]):
    try:
        view = await p.contract_view(service, contract_id)
    except Problem as exc:
        return p.render(request, ctx, "error.html", status_code=exc.status, message=exc.detail)
    def read() -> tuple[list, list]:
        with request.app.state.sessions() as session:
            return p.contract_events(session, contract_id), p.contract_documents(session, contract_id)

    events, documents = await service.in_db(read)  # a 503 page if the database does not answer
    now = datetime.now(timezone.utc)
    versions = [e for e in events if e.type == "amendment.applied"]
    escalations = [e for e in events if e.type in ("notification.escalation", "milestone.overdue",
                                                   "installment.overdue", "escalation.stopped")]
    return p.render(request, ctx, "contract.html", c=view, events=events, documents=documents, versions=versions,
                    escalations=escalations, tl=p.timeline(view, events, now), now=now)


@router.get("/tasks", name="ui_tasks")
def tasks(request: Request, ctx: Ctx):
    if ctx.user is None:
        return _redirect(ctx, "/ui/login?next=/ui/tasks")
    with request.app.state.sessions() as session:
        work = p.my_work(session, ctx.user.id)
    return p.render(request, ctx, "tasks.html", work=work, now=datetime.now(timezone.utc))


@router.get("/overdue", name="ui_overdue")
def overdue(request: Request, ctx: Ctx, department: str | None = None, owner: str | None = None):
    now = datetime.now(timezone.utc)
    with request.app.state.sessions() as session:
        board = p.overdue_board(session, department=department or None, owner=owner or None, now=now,
                                viewer=ctx.principal)
    return p.render(request, ctx, "overdue.html", board=board, department=department or "", owner=owner or "",
                    departments=p.DEPARTMENTS, now=now)


def _date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise Problem(422, f"{value!r} is not a date (YYYY-MM-DD)", slug="validation") from None


@router.get("/analytics", name="ui_analytics")
async def analytics(
    request: Request,
    ctx: Ctx,
    service: Annotated[a.AnalyticsService, Depends(get_analytics)],
    period: str | None = None,
    date_from: Annotated[str | None, Query(alias="from")] = None,
    date_to: Annotated[str | None, Query(alias="to")] = None,
    customer: str | None = None,
    owner: str | None = None,
    department: str | None = None,
    playbook: str | None = None,
):
    form = {"period": period or "", "from": date_from or "", "to": date_to or "", "customer": customer or "",
            "owner": owner or "", "department": department or "", "playbook": playbook or ""}
    error, data, f = None, None, None
    try:
        f = a.make_filters(tz=ctx.tz, period=period or None, date_from=_date(date_from), date_to=_date(date_to),
                           customer=customer, owner=owner, department=department, playbook=playbook)
    except Problem as exc:
        error = exc.detail
    if f is not None:
        data = await run_in_threadpool(p.analytics_data, service, f, ctx)
    def choices() -> tuple[list, list]:
        with request.app.state.sessions() as session:
            return p.owners(session), p.playbooks(session)

    owners, playbooks = await in_thread(request.app.state.settings.database_call_seconds, choices)
    return p.render(request, ctx, "analytics.html", status_code=422 if error else 200, form=form, error=error,
                    d=data, f=f, owners=owners, playbooks=playbooks, departments=p.DEPARTMENTS)


@router.get("/reports/quarterly", name="ui_quarterly")
async def quarterly(
    request: Request,
    ctx: Ctx,
    service: Annotated[a.AnalyticsService, Depends(get_analytics)],
    quarter: str | None = None,
    customer: str | None = None,
    owner: str | None = None,
    department: str | None = None,
    playbook: str | None = None,
):
    import re

    now = datetime.now(timezone.utc)
    if quarter and not re.fullmatch(a.QUARTER_PATTERN, quarter):
        error, report = f"{quarter!r} is not a quarter such as 2026-Q3", None
    else:
        error = None
        quarter = quarter or a.last_complete_quarter(now, ctx.tz)
        f = a.make_filters(tz=ctx.tz, customer=customer, owner=owner, department=department, playbook=playbook)
        report = await run_in_threadpool(service.quarterly, f, quarter)
    current = a.quarter_of(now, ctx.tz)
    choices, q = [], current
    for _ in range(8):
        choices.append(q)
        q = a.previous_quarter(q)
    params = {k: v for k, v in {"quarter": quarter, "customer": customer, "owner": owner, "department": department,
                                "playbook": playbook}.items() if v}
    from urllib.parse import urlencode

    return p.render(request, ctx, "quarterly.html", status_code=422 if error else 200, report=report, error=error,
                    quarter=quarter, choices=choices, csv_url="/analytics/reports/quarterly.csv?" + urlencode(params),
                    form={"customer": customer or "", "owner": owner or "", "department": department or "",
                          "playbook": playbook or ""}, departments=p.DEPARTMENTS)
