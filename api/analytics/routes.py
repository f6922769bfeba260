"""``GET /analytics/...``: metrics computed in SQL over the read model (api/analytics/service.py,
definitions in docs/analytics.md), and the quarterly review as JSON and CSV."""

from __future__ import annotations

from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from api.analytics import service as a
from api.platform.fields import DateIn
from api.platform.problems import PROBLEM_RESPONSE, Responses

router = APIRouter(prefix="/analytics", tags=["analytics"])

_problem = {**PROBLEM_RESPONSE, "description": "Invalid filters (problem details, RFC 9457)"}
ERRORS: Responses = {422: _problem}


async def get_analytics(request: Request) -> a.AnalyticsService:
    service = getattr(request.app.state, "analytics", None)
    if service is None:
        service = a.AnalyticsService(request.app.state.sessions, ZoneInfo(request.app.state.settings.business_timezone))
        request.app.state.analytics = service
    return service


async def get_filters(
    request: Request,
    period: Annotated[
        str | None,
        Query(pattern=a.PERIOD_PATTERN, max_length=20,
              description="all, last-12-months, a year (2026), a quarter (2026-Q3) or a month (2026-09). "
                          "Default (neither period nor dates): the last 12 months"),
    ] = None,
    date_from: Annotated[DateIn | None, Query(alias="from", description="First day (inclusive), business time zone")] = None,
    date_to: Annotated[DateIn | None, Query(alias="to", description="Last day (inclusive), business time zone")] = None,
    customer: Annotated[str | None, Query(min_length=1, max_length=200,
                                          description="Customer name (substring, any case) or CRM id")] = None,
    owner: Annotated[str | None, Query(min_length=1, max_length=100,
                                       description="User id: the milestone's owner for stage metrics, the "
                                                   "contract's owner for contract and money metrics")] = None,
    department: Annotated[str | None, Query(min_length=1, max_length=60,
                                            description="Milestone department (stage metrics)")] = None,
    playbook: Annotated[str | None, Query(min_length=1, max_length=50)] = None,
) -> a.Filters:
    return a.make_filters(
        tz=ZoneInfo(request.app.state.settings.business_timezone), period=period, date_from=date_from,
        date_to=date_to, customer=customer, owner=owner, department=department, playbook=playbook,
    )


Service = Annotated[a.AnalyticsService, Depends(get_analytics)]
Filters = Annotated[a.Filters, Depends(get_filters)]


@router.get("/cycle", response_model=a.CycleOut, responses=ERRORS)
async def fulfilment_cycle(service: Service, f: Filters):
    """Fulfilment cycle (signature → the payment that settled the contract) of the contracts settled
    in the period: average, p50, p90, per playbook, and a histogram in 15-day bars."""
    return await run_in_threadpool(service.cycle, f)


@router.get("/stages", response_model=a.StagesOut, responses=ERRORS)
async def stage_times(service: Service, f: Filters):
    """Per stage (milestone kind): time spent (average, p50, p90), on-time rate of the milestones
    completed in the period, late-delivery rate of those that fell due in it."""
    return await run_in_threadpool(service.stages, f)


@router.get("/receivables", response_model=a.ReceivablesOut, responses=ERRORS)
async def receivables(service: Service, f: Filters):
    """Per currency: receivables ageing as of the period's end (0-30, 31-60, 61-90, 90+ days past
    due; and not yet due) and days sales outstanding over the period."""
    return await run_in_threadpool(service.receivables, f)


@router.get("/costs", response_model=a.CostsOut, responses=ERRORS)
async def cost_overrun(service: Service, f: Filters):
    """Planned against actual cost recorded on milestones completed in the period, per currency and stage."""
    return await run_in_threadpool(service.costs, f)


@router.get("/satisfaction", response_model=a.SatisfactionOut, responses=ERRORS)
async def customer_satisfaction(service: Service, f: Filters):
    """Scores (1-5) captured at customer acceptance in the period: average and distribution."""
    return await run_in_threadpool(service.satisfaction, f)


@router.get("/bottlenecks", response_model=a.BottlenecksOut, responses=ERRORS)
async def bottlenecks(service: Service, f: Filters):
    """Stages ranked by the delay they contributed (milestones due in the period), with whose
    queue holds most of it."""
    return await run_in_threadpool(service.bottlenecks, f)


Quarter = Annotated[
    str | None,
    Query(pattern=a.QUARTER_PATTERN, max_length=7, description="e.g. 2026-Q3; default: the last complete quarter"),
]


def _quarter(service: a.AnalyticsService, f: a.Filters, quarter: str | None) -> str:
    return quarter or a.last_complete_quarter(f.now, service.tz)


@router.get("/reports/quarterly", response_model=a.QuarterlyReportOut, responses=ERRORS)
async def quarterly_report(service: Service, f: Filters, quarter: Quarter = None):
    """The quarterly review: each metric for the quarter and the one before, with the change.
    Scope filters apply; period filters are ignored (the quarter is the period)."""
    return await run_in_threadpool(service.quarterly, f, _quarter(service, f, quarter))


@router.get(
    "/reports/quarterly.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                     "description": "The quarterly review as CSV (UTF-8 with BOM, for spreadsheets)"}, **ERRORS},
)
async def quarterly_report_csv(service: Service, f: Filters, quarter: Quarter = None):
    """The quarterly review as CSV: section, metric, unit, the quarter, the previous quarter, change."""
    q = _quarter(service, f, quarter)
    report = await run_in_threadpool(service.quarterly, f, q)
    return Response(
        "\ufeff" + a.report_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="quarterly-review-{q}.csv"'},
    )
