"""The web dashboard's service layer: who is looking (``current_user``), in which language, and
the data each page shows.  Pages read the read model (lists, boards, tasks), a contract's live
state through ``ContractService.get`` (falling back to the read model when the workflow cannot
answer, e.g. history seeded without one), and the analytics service.

Pages use the API's authentication (api/auth/service.py): logging in at ``/ui/login`` sets a session
cookie holding the same access token ``POST /auth/token`` issues; the middleware reads it, the
policy (api/auth/policy.py) judges each page, and lists show only the contracts the person may see.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from api.analytics import service as a
from api.auth.policy import visible_contracts
from api.contracts.service import ContractService
from api.platform.problems import Problem
from models import Contract, ContractEvent, Customer, Document, Installment, Milestone, Payment, Task, User

ROOT = Path(__file__).resolve().parents[2]  # the repository: templates/ and static/
TEMPLATES = Jinja2Templates(directory=str(ROOT / "templates" / "pages"))
STATIC_DIR = ROOT / "static"
LANG_COOKIE = "ui_lang"
LANGS = ("zh", "en")
PAGE_SIZE = 50
LIVE_TIMEOUT = 5.0  # seconds to wait for a workflow's live state before showing the read model

# ---------------------------------------------------------------- labels, Chinese and English
LABELS: dict[str, tuple[str, str]] = {  # key: (zh, en)
    "app": ("合同执行跟踪", "Contract tracking"),
    "contracts": ("合同", "Contracts"),
    "my_tasks": ("我的任务", "My tasks"),
    "overdue_board": ("逾期看板", "Overdue board"),
    "analytics": ("分析", "Analytics"),
    "quarterly": ("季度回顾", "Quarterly review"),
    "pick_user": ("选择用户", "Pick a user"),
    "signed_in_as": ("当前用户", "Signed in as"),
    "nobody": ("未选择", "nobody"),
    "switch": ("切换", "Switch"),
    "sign_out": ("退出", "Sign out"),
    "login_hint": ("与 API 相同的账号密码（POST /auth/token）。", "The same user id and password as the API (POST /auth/token)."),
    "log_in": ("登录", "Log in"),
    "username": ("用户名", "User id"),
    "password": ("密码", "Password"),
    "login_failed": ("用户名或密码错误", "Wrong user id or password"),
    "title": ("标题", "Title"),
    "customer": ("客户", "Customer"),
    "owner": ("负责人", "Owner"),
    "status": ("状态", "Status"),
    "amount": ("金额", "Amount"),
    "outstanding": ("未收", "Outstanding"),
    "paid": ("已收", "Paid"),
    "credit": ("预收/溢付", "Credit"),
    "overdue": ("逾期", "Overdue"),
    "overdue_only": ("只看逾期", "Overdue only"),
    "next_due": ("下一到期", "Next due"),
    "playbook": ("流程模板", "Playbook"),
    "all": ("全部", "All"),
    "filter": ("筛选", "Filter"),
    "reset": ("重置", "Reset"),
    "search": ("搜索", "Search"),
    "no_results": ("没有符合条件的合同。", "No contract matches."),
    "page": ("页", "Page"),
    "previous": ("上一页", "Previous"),
    "next": ("下一页", "Next"),
    "of": ("共", "of"),
    "timeline": ("时间线", "Timeline"),
    "planned": ("计划", "Planned"),
    "actual": ("实际", "Actual"),
    "planned_vs_actual": ("计划与实际", "Planned vs actual"),
    "milestones": ("里程碑", "Milestones"),
    "installments": ("分期付款", "Installments"),
    "payments": ("收款", "Payments"),
    "amendments": ("变更", "Amendments"),
    "escalations": ("升级", "Escalations"),
    "events": ("事件", "Events"),
    "documents": ("文件", "Documents"),
    "versions": ("版本", "Versions"),
    "no_documents": ("暂无文件。", "No documents."),
    "temporal_ui": ("在 Temporal UI 中查看工作流", "Open the workflow in the Temporal UI"),
    "live_state": ("实时状态（来自工作流）", "Live state (from the workflow)"),
    "read_model_state": ("读模型快照（工作流暂不可读）", "Read-model snapshot (the workflow cannot answer now)"),
    "term": ("合同期", "Term"),
    "due": ("到期", "Due"),
    "completed": ("完成", "Completed"),
    "started": ("开始", "Started"),
    "department": ("部门", "Department"),
    "stage": ("阶段", "Stage"),
    "days_late": ("逾期天数", "Days late"),
    "today": ("今天", "today"),
    "reference": ("流水号", "Reference"),
    "received": ("到账", "Received"),
    "open_tasks": ("待办任务", "Open tasks"),
    "my_milestones": ("我负责的里程碑", "Milestones I own"),
    "my_receivables": ("我的逾期应收", "My overdue receivables"),
    "nothing_here": ("这里没有内容。", "Nothing here."),
    "created": ("创建于", "Created"),
    "contract": ("合同", "Contract"),
    "receivables": ("逾期应收", "Overdue receivables"),
    "owed": ("欠款", "Owed"),
    "period": ("期间", "Period"),
    "from": ("从", "From"),
    "to": ("到", "To"),
    "cycle": ("履约周期（签约→结清）", "Fulfilment cycle (signature → settled)"),
    "stage_time": ("各阶段耗时（天）", "Time in each stage (days)"),
    "on_time_rate": ("准时率", "On-time rate"),
    "late_rate": ("延误率", "Late-delivery rate"),
    "ageing": ("应收账龄", "Receivables ageing"),
    "dso": ("应收账款周转天数 DSO", "Days sales outstanding"),
    "cost_overrun": ("成本超支", "Cost overrun"),
    "satisfaction": ("客户满意度", "Customer satisfaction"),
    "bottlenecks": ("瓶颈排名", "Bottleneck ranking"),
    "whose_queue": ("积压在谁手里", "Whose queue"),
    "total_delay": ("总延误（天）", "Total delay (days)"),
    "mean_delay": ("平均延误（天）", "Mean delay (days)"),
    "settled": ("已结清合同", "Contracts settled"),
    "average": ("平均", "Average"),
    "responses": ("评分数", "Responses"),
    "days": ("天", "days"),
    "metric": ("指标", "Metric"),
    "change": ("变化", "Change"),
    "section": ("类别", "Section"),
    "download_csv": ("下载 CSV", "Download CSV"),
    "quarter": ("季度", "Quarter"),
    "definitions": ("指标定义见 docs/analytics.md。", "Metric definitions: docs/analytics.md."),
    "note": ("备注", "Note"),
    "language": ("English", "中文"),
    "planned_cost": ("计划成本", "Planned cost"),
    "actual_cost": ("实际成本", "Actual cost"),
    "version": ("版本", "Version"),
    "by": ("经办人", "By"),
}
STATUS_LABELS: dict[str, tuple[str, str]] = {
    "active": ("执行中", "active"), "completed": ("已完成", "completed"), "terminated": ("已终止", "terminated"),
    "expired": ("已到期", "expired"), "starting": ("启动中", "starting"), "pending": ("待办", "pending"),
    "in_progress": ("进行中", "in progress"), "done": ("已完成", "done"), "overdue": ("逾期", "overdue"),
    "waived": ("已豁免", "waived"), "paid": ("已付清", "paid"), "partially_paid": ("部分付款", "partially paid"),
    "open": ("待处理", "open"), "acked": ("已确认", "acknowledged"),
}
STAGE_LABELS: dict[str, tuple[str, str]] = {
    "order_review": ("订单审核", "Order review"), "production_scheduling": ("生产排期", "Production scheduling"),
    "shipping": ("物流发货", "Shipping"), "customer_acceptance": ("客户验收", "Customer acceptance"),
    "invoicing": ("开票", "Invoicing"), "payment_collection": ("回款", "Payment collection"),
    "renewal": ("续约", "Renewal"), "custom": ("其他（交付报告等）", "Other (delivery reports…)"),
}
DEPARTMENTS = ["sales", "production", "logistics", "delivery", "finance", "legal"]


def _pick(table: dict[str, tuple[str, str]], key: str, lang: str) -> str:
    pair = table.get(key)
    return key if pair is None else pair[0 if lang == "zh" else 1]


# ---------------------------------------------------------------- who and which language
@dataclass
class UiContext:
    """What every page needs: the user (or None), the language, and cookies to remember them."""

    user: User | None
    lang: str
    tz: ZoneInfo
    principal: Any = None  # api.principal.Principal of the caller
    set_cookies: dict[str, str] = field(default_factory=dict)
    clear_cookies: list[str] = field(default_factory=list)

    def t(self, key: str) -> str:
        return _pick(LABELS, key, self.lang)

    def status(self, key: str | None) -> str:
        return _pick(STATUS_LABELS, key or "", self.lang)

    def stage(self, key: str | None) -> str:
        return _pick(STAGE_LABELS, key or "", self.lang)

    def when(self, value: datetime | None, with_time: bool = False) -> str:
        if value is None:
            return "—"
        local = value.astimezone(self.tz)
        return local.strftime("%Y-%m-%d %H:%M" if with_time else "%Y-%m-%d")

    def last_day(self, end_at: datetime | None) -> str:
        """The last day of a term that ends at ``end_at`` (an instant not part of it: end_date
        2027-11-26 ends at 2027-11-27 00:00 local time)."""
        return self.when(end_at - timedelta(microseconds=1)) if end_at is not None else "—"


def _accept_language(header: str | None) -> str:
    best, best_q = "zh", -1.0
    for part in (header or "").split(","):
        bits = part.strip().split(";")
        tag = bits[0].strip().lower()
        q = 1.0
        for b in bits[1:]:
            if b.strip().startswith("q="):
                try:
                    q = float(b.strip()[2:])
                except ValueError:
                    q = 0.0
        lang = "zh" if tag.startswith("zh") else "en" if tag.startswith("en") else None
        if lang and q > best_q:
            best, best_q = lang, q
    return best


def current_user(request: Request) -> User | None:
    """The person looking at the page: the logged-in user (None for a machine's key)."""
    principal = getattr(request.state, "principal", None)
    if principal is None or principal.kind != "user":
        return None
    with request.app.state.sessions() as session:
        user = session.get(User, principal.id)
        if user is None or not user.active:
            return None
        session.expunge(user)
    return user


def ui_context(request: Request) -> UiContext:
    """FastAPI dependency of every page."""
    cookies: dict[str, str] = {}
    clear: list[str] = []
    lang = request.query_params.get("lang")
    if lang in LANGS:
        cookies[LANG_COOKIE] = lang
    else:
        lang = request.cookies.get(LANG_COOKIE)
        if lang not in LANGS:
            lang = _accept_language(request.headers.get("accept-language"))
    user = current_user(request)
    tz = ZoneInfo(request.app.state.settings.business_timezone)
    return UiContext(user=user, lang=lang, tz=tz, set_cookies=cookies, clear_cookies=clear,
                     principal=getattr(request.state, "principal", None))


def render(request: Request, ctx: UiContext, template: str, status_code: int = 200, **data: Any):
    response = TEMPLATES.TemplateResponse(
        request, template, {"ctx": ctx, "t": ctx.t, "request": request, **data}, status_code=status_code
    )
    for name, value in ctx.set_cookies.items():
        response.set_cookie(name, value, max_age=365 * 86400, httponly=True, samesite="lax")
    for name in ctx.clear_cookies:
        response.delete_cookie(name)
    return response


def problem_page(request: Request, problem: Problem):
    """A refused page (403, 404...) as a page, for api/platform/problems.py to answer with."""
    return render(request, ui_context(request), "error.html", status_code=problem.status, message=problem.detail)


def with_query(request: Request, **changes: Any) -> str:
    """The current URL's query with some parameters changed (None removes one)."""
    params = dict(request.query_params)
    params.pop("lang", None)
    for k, v in changes.items():
        if v is None or v == "":
            params.pop(k, None)
        else:
            params[k] = str(v)
    from urllib.parse import urlencode

    return "?" + urlencode(params) if params else "?"


TEMPLATES.env.globals["with_query"] = with_query


def money(value: Any) -> str:
    """A decimal string with thousands separators, its decimals kept: 2375000.00 → 2,375,000.00."""
    if value is None or value == "":
        return "—"
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    exponent = d.as_tuple().exponent
    places = max(0, -exponent) if isinstance(exponent, int) else 2
    return f"{d:,.{places}f}"


TEMPLATES.env.filters["money"] = money


def users(session: Session) -> list[User]:
    return list(session.execute(select(User).where(User.active.is_(True)).order_by(User.department, User.id)).scalars())


# ---------------------------------------------------------------- contract list
@dataclass
class ListFilters:
    status: str | None = None
    owner: str | None = None
    customer: str | None = None
    playbook: str | None = None
    overdue: bool = False
    q: str | None = None
    page: int = 1


def list_contracts(session: Session, f: ListFilters, viewer: Any = None) -> tuple[list[Contract], int]:
    query = select(Contract)
    visible = visible_contracts(viewer) if viewer is not None else None
    if visible is not None:
        query = query.where(visible)
    if f.status:
        query = query.where(Contract.status == f.status)
    if f.owner:
        query = query.where(Contract.owner == f.owner)
    if f.customer:
        query = query.where(or_(
            Contract.customer_name.icontains(f.customer, autoescape=True),
            Contract.customer_id.in_(select(Customer.id).where(Customer.external_id == f.customer)),
        ))
    if f.playbook:
        query = query.where(Contract.playbook == f.playbook)
    if f.overdue:
        query = query.where(Contract.overdue_count > 0, Contract.status.in_(("active", "starting")))
    if f.q:
        text = f.q.strip()
        # Words of the title or the customer's name, the contract's number, or the first
        # characters of its id (as copied from a list or a notification: 4 at least).
        terms = [Contract.title.icontains(text, autoescape=True),
                 Contract.customer_name.icontains(text, autoescape=True),
                 Contract.id == text, Contract.external_id.icontains(text, autoescape=True)]
        if len(text) >= 4:
            terms.append(Contract.id.startswith(text.lower(), autoescape=True))
        query = query.where(or_(*terms))
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(
        query.order_by(Contract.overdue_count.desc(), Contract.effective_at.desc(), Contract.id)
        .limit(PAGE_SIZE).offset((f.page - 1) * PAGE_SIZE)
    ).scalars().all()
    return list(rows), total


def owners(session: Session) -> list[str]:
    return list(session.execute(select(Contract.owner).distinct().order_by(Contract.owner)).scalars())


def playbooks(session: Session) -> list[str]:
    return [p for p in session.execute(select(Contract.playbook).distinct().order_by(Contract.playbook)).scalars() if p]


# ---------------------------------------------------------------- one contract
@dataclass
class View:
    """A contract as the page shows it, from the live state or the read model."""

    id: str
    title: str
    customer: str
    currency: str
    amount: str
    paid: str
    outstanding: str
    credit: str
    owner: str
    playbook: str | None
    status: str
    effective_at: datetime
    end_at: datetime
    overdue_count: int
    closed_at: datetime | None
    close_reason: str | None
    escalation_level: int
    temporal_ui: str | None
    workflow_id: str
    live: bool
    milestones: list[dict[str, Any]]
    installments: list[dict[str, Any]]
    payments: list[dict[str, Any]]


async def contract_view(service: ContractService, contract_id: str) -> View:
    row = await service.in_db(service.row, contract_id)  # 404 problem if unknown
    ui = (f"{service.settings.temporal_ui_url}/namespaces/{service.settings.temporal_namespace}"
          f"/workflows/{row.workflow_id}")
    try:
        out = await asyncio.wait_for(service.get(contract_id), timeout=LIVE_TIMEOUT)
    except (TimeoutError, Problem, Exception):  # noqa: BLE001 - any failure: show the read model
        out = None
    if out is not None:
        return View(
            id=out.id, title=out.title, customer=out.customer.name, currency=out.currency, amount=out.amount,
            paid=out.paid, outstanding=out.outstanding, credit=out.credit, owner=out.owner, playbook=out.playbook,
            status=out.status, effective_at=out.effective_at, end_at=out.end_at, overdue_count=out.overdue_count,
            closed_at=out.closed_at, close_reason=out.close_reason, escalation_level=out.escalation_level,
            temporal_ui=out.temporal_ui or ui, workflow_id=out.workflow_id, live=True,
            milestones=[m.model_dump() for m in out.milestones],
            installments=[i.model_dump() for i in out.installments],
            payments=[p.model_dump() for p in out.payments],
        )
    return await service.in_db(_snapshot_view, service, contract_id, ui)


def _snapshot_view(service: ContractService, contract_id: str, ui: str) -> View:
    """The read model's copy of the contract (its workflow did not answer)."""
    with service.sessions() as session:
        c = session.get(Contract, contract_id)
        if c is None:  # removed since service.row() found it
            raise Problem(404, f"no contract with id {contract_id!r}", slug="contract-not-found")
        ms = session.execute(select(Milestone).where(Milestone.contract_id == contract_id)
                             .order_by(Milestone.position)).scalars().all()
        ins = session.execute(select(Installment).where(Installment.contract_id == contract_id)
                              .order_by(Installment.position)).scalars().all()
        pays = session.execute(select(Payment).where(Payment.contract_id == contract_id)
                               .order_by(Payment.received_at)).scalars().all()
        places = int(c.spec.get("minor_units", 2)) if isinstance(c.spec, dict) else 2

        def money(v: Decimal | None) -> str | None:
            return None if v is None else str(Decimal(v).quantize(Decimal(1).scaleb(-places)))

        def amount(v: Decimal) -> str:
            return str(Decimal(v).quantize(Decimal(1).scaleb(-places)))

        return View(
            id=c.id, title=c.title, customer=c.customer_name, currency=c.currency, amount=amount(c.amount),
            paid=amount(c.paid_total), outstanding=amount(c.outstanding), credit=amount(c.credit), owner=c.owner,
            playbook=c.playbook, status=c.status, effective_at=c.effective_at, end_at=c.end_at,
            overdue_count=c.overdue_count, closed_at=c.closed_at, close_reason=c.close_reason, escalation_level=0,
            temporal_ui=ui, workflow_id=c.workflow_id, live=False,
            milestones=[{"key": m.key, "name": m.name, "kind": m.kind, "owner": m.owner, "department": m.department,
                         "status": m.status, "due_at": m.due_at, "due_estimated": m.due_estimated,
                         "completed_at": m.completed_at, "completed_by": m.completed_by, "progress": m.progress,
                         "planned_cost": money(m.planned_cost), "actual_cost": money(m.actual_cost),
                         "satisfaction": m.satisfaction} for m in ms],
            installments=[{"key": i.key, "due_at": i.due_at, "due_estimated": i.due_estimated, "amount": money(i.amount),
                           "paid": money(i.paid), "status": i.status, "paid_at": i.paid_at} for i in ins],
            payments=[{"reference": p.reference, "amount": money(p.amount), "currency": p.currency,
                       "received_at": p.received_at, "recorded_at": p.recorded_at, "excess": money(p.excess)}
                      for p in pays],
        )


def contract_events(session: Session, contract_id: str) -> list[ContractEvent]:
    return list(session.execute(select(ContractEvent).where(ContractEvent.contract_id == contract_id)
                                .order_by(ContractEvent.id).limit(2000)).scalars())


def contract_documents(session: Session, contract_id: str) -> list[Document]:
    return list(session.execute(select(Document).where(Document.contract_id == contract_id)
                                .order_by(Document.kind, Document.version)).scalars())


TIMELINE_WIDTH = 960
LABEL_WIDTH = 200
ROW_HEIGHT = 30


def timeline(view: View, events: list[ContractEvent], now: datetime) -> dict[str, Any]:
    """Geometry of the timeline SVG: per milestone its stage window (start → due) and what happened
    (start → completion, or → now while open), payments, amendments and escalations as markers."""
    starts, latest = [], None
    for m in view.milestones:
        starts.append(latest or view.effective_at)
        if m["completed_at"] is not None and (latest is None or m["completed_at"] > latest):
            latest = m["completed_at"]
    moments = [view.effective_at, now if view.closed_at is None else view.closed_at]
    for m in view.milestones:
        moments += [x for x in (m["due_at"], m["completed_at"]) if x is not None]
    moments += [p["received_at"] for p in view.payments]
    moments += [i["due_at"] for i in view.installments if i["due_at"] is not None]
    lo, hi = min(moments), max(moments)
    span = max((hi - lo).total_seconds(), 86400.0)
    lo, hi = lo - timedelta(seconds=span * 0.02), hi + timedelta(seconds=span * 0.04)
    span = (hi - lo).total_seconds()
    plot = TIMELINE_WIDTH - LABEL_WIDTH - 10

    def x(t: datetime) -> float:
        return round(LABEL_WIDTH + (t - lo).total_seconds() / span * plot, 1)

    rows = []
    planned_start = view.effective_at
    for i, (m, start) in enumerate(zip(view.milestones, starts, strict=False)):
        y = 24 + i * ROW_HEIGHT
        due, done = m["due_at"], m["completed_at"]
        # Started: every earlier milestone is closed (its stage has begun), or it is itself done.
        begun = done is not None or all(e["completed_at"] is not None for e in view.milestones[:i])
        end = done or (now if view.closed_at is None else view.closed_at)
        late = (due is not None and end > due) if m["status"] != "waived" else False
        state = ("waived" if m["status"] == "waived" else "late" if late and done else "overdue" if late and begun
                 else "done" if done else "open")
        rows.append({
            "y": y, "key": m["key"], "kind": m["kind"], "name": m["name"], "status": m["status"], "state": state,
            # planned: from the previous milestone's due date (the plan's start of this stage) to its own
            "planned_x1": x(min(planned_start, due)) if due else None, "planned_x2": x(due) if due else None,
            "due_x": x(due) if due else None, "due_estimated": m.get("due_estimated", False),
            # actual: from the stage's real start to its completion, or to now while it is open
            "actual_x1": x(start) if begun else None, "actual_x2": max(x(end), x(start) + 2) if begun else None,
            "done_x": x(done) if done else None,
        })
        if due is not None:
            planned_start = due
    y_pay = 24 + len(rows) * ROW_HEIGHT
    payments = [{"x": x(p["received_at"]), "label": f"{p['reference']}: {p['amount']}", "y": y_pay}
                for p in view.payments]
    markers = []
    for e in events:
        kind = None
        if e.type.startswith("amendment.applied"):
            kind = "amendment"
        elif e.type == "notification.escalation" or e.type.startswith("escalation."):
            kind = "escalation"
        if kind and lo <= e.at <= hi:
            label = e.type
            if kind == "amendment":
                label = f"#{e.data.get('number', '')} " + "; ".join(c.get("clause", "") for c in e.data.get("clauses", []))
            elif e.data.get("key"):
                label = f"{e.type} {e.data.get('key')} L{e.data.get('level', '')}"
            markers.append({"x": x(e.at), "kind": kind, "label": label, "at": e.at})
    y_events = y_pay + ROW_HEIGHT
    ticks = []
    months = max(1, math.ceil(span / 86400 / 30 / 8))  # at most ~8 ticks
    t = datetime(lo.year, lo.month, 1, tzinfo=timezone.utc)
    while t <= hi:
        if t >= lo:
            ticks.append({"x": x(t), "label": t.strftime("%Y-%m")})
        month = t.month - 1 + months
        t = t.replace(year=t.year + month // 12, month=month % 12 + 1)
    now_x = x(now) if lo <= now <= hi else None
    return {"width": TIMELINE_WIDTH, "height": y_events + ROW_HEIGHT, "label_width": LABEL_WIDTH, "rows": rows,
            "payments": payments, "y_pay": y_pay, "markers": markers, "y_events": y_events, "ticks": ticks,
            "now_x": now_x}


# ---------------------------------------------------------------- tasks and the overdue board
def my_work(session: Session, user_id: str) -> dict[str, Any]:
    tasks = list(session.execute(select(Task).where(Task.assignee == user_id, Task.status == "open")
                                 .order_by(Task.created_at.desc()).limit(200)).scalars())
    milestones = session.execute(
        select(Milestone, Contract.title, Contract.customer_name)
        .join(Contract, Contract.id == Milestone.contract_id)
        .where(Milestone.owner == user_id, Milestone.status.in_(("pending", "in_progress", "overdue")),
               Contract.status == "active")
        .order_by((Milestone.status == "overdue").desc(), Milestone.due_at.is_(None), Milestone.due_at)
        .limit(200)
    ).all()
    receivables = session.execute(
        select(Installment, Contract.title, Contract.customer_name, Contract.currency)
        .join(Contract, Contract.id == Installment.contract_id)
        .where(Contract.owner == user_id, Installment.status == "overdue", Contract.status == "active")
        .order_by(Installment.due_at).limit(200)
    ).all()
    return {"tasks": tasks, "milestones": milestones, "receivables": receivables}


def overdue_board(session: Session, *, department: str | None, owner: str | None, now: datetime,
                  viewer: Any = None) -> dict[str, Any]:
    visible = visible_contracts(viewer) if viewer is not None else None
    query = (
        select(Milestone, Contract.title, Contract.customer_name)
        .join(Contract, Contract.id == Milestone.contract_id)
        .where(Milestone.status == "overdue", Contract.status == "active")
        .order_by(Milestone.due_at)
    )
    if department:
        query = query.where(Milestone.department == department)
    if owner:
        query = query.where(Milestone.owner == owner)
    if visible is not None:
        query = query.where(visible)
    columns: dict[str, list[dict[str, Any]]] = {}
    for m, title, customer in session.execute(query.limit(1000)).all():
        days = (now - m.due_at).total_seconds() / 86400 if m.due_at else 0
        columns.setdefault(m.department, []).append(
            {"m": m, "title": title, "customer": customer, "days": days,
             "heat": "hot" if days > 7 else "warm" if days > 3 else "new"})
    ordered = sorted(columns.items(), key=lambda kv: (DEPARTMENTS.index(kv[0]) if kv[0] in DEPARTMENTS else 99, kv[0]))
    inst_q = (
        select(Installment, Contract.title, Contract.customer_name, Contract.currency, Contract.owner)
        .join(Contract, Contract.id == Installment.contract_id)
        .where(Installment.status == "overdue", Contract.status == "active")
        .order_by(Installment.due_at)
    )
    if owner:
        inst_q = inst_q.where(Contract.owner == owner)
    if visible is not None:
        inst_q = inst_q.where(visible)
    receivables = []
    if not department or department in ("finance", "sales"):
        for i, title, customer, currency, c_owner in session.execute(inst_q.limit(500)).all():
            days = (now - i.due_at).total_seconds() / 86400 if i.due_at else 0
            receivables.append({"i": i, "title": title, "customer": customer, "currency": currency,
                                "owner": c_owner, "owed": Decimal(i.amount) - Decimal(i.paid), "days": days,
                                "heat": "hot" if days > 7 else "warm" if days > 3 else "new"})
    return {"columns": ordered, "receivables": receivables,
            "count": sum(len(v) for _, v in ordered) + len(receivables)}


# ---------------------------------------------------------------- analytics page
def analytics_data(service: a.AnalyticsService, f: a.Filters, ctx: UiContext) -> dict[str, Any]:
    cycle = service.cycle(f)
    stages = service.stages(f)
    receivables = service.receivables(f)
    costs = service.costs(f)
    satisfaction = service.satisfaction(f)
    bottlenecks = service.bottlenecks(f)
    currency = next((c.currency for c in receivables.currencies if c.currency == "CNY"),
                    receivables.currencies[0].currency if receivables.currencies else None)
    rec = next((c for c in receivables.currencies if c.currency == currency), None)
    charts = {
        "stages": {
            "categories": [ctx.stage(s.stage) for s in stages.stages],
            "series": [
                {"name": ctx.t("average"), "data": [_r(s.avg_days) for s in stages.stages]},
                {"name": "p50", "data": [_r(s.p50_days) for s in stages.stages]},
                {"name": "p90", "data": [_r(s.p90_days) for s in stages.stages]},
            ],
        },
        "ontime": {
            "categories": [ctx.stage(s.stage) for s in stages.stages],
            "series": [
                {"name": ctx.t("on_time_rate"), "data": [_pct(s.on_time_rate) for s in stages.stages]},
                {"name": ctx.t("late_rate"), "data": [_pct(s.late_rate) for s in stages.stages]},
            ],
            "unit": "%",
        },
        "cycle": {
            "categories": [f"{h.from_days}-{h.to_days}" for h in cycle.histogram],
            "series": [{"name": ctx.t("settled"), "data": [h.count for h in cycle.histogram]}],
        },
        "ageing": {
            "categories": [b.bucket for b in rec.ageing] if rec else [],
            "series": [{"name": f"{ctx.t('owed')} ({currency})", "data": [float(b.amount) for b in rec.ageing]
                        if rec else []}],
        },
        "bottlenecks": {
            "categories": [ctx.stage(b.stage) for b in reversed(bottlenecks.stages)],
            "series": [{"name": ctx.t("total_delay"), "data": [_r(b.total_delay_days) for b in reversed(bottlenecks.stages)]}],
            "horizontal": True,
        },
        "satisfaction": {
            "categories": [str(d.score) for d in satisfaction.distribution],
            "series": [{"name": ctx.t("responses"), "data": [d.count for d in satisfaction.distribution]}],
        },
    }
    return {"cycle": cycle, "stages": stages, "receivables": receivables, "costs": costs,
            "satisfaction": satisfaction, "bottlenecks": bottlenecks, "charts_json": json.dumps(charts, ensure_ascii=False),
            "currency": currency}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _pct(value: float | None) -> float | None:
    return None if value is None else round(value * 100, 1)
