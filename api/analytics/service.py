"""Analytics over the read model, computed in SQL (SQLAlchemy Core), on PostgreSQL and SQLite.

Every number here is an aggregate the database computes: Python only builds the statements,
turns the few result rows into response models and, for the quarterly report, puts two periods
side by side.  Definitions (what "on time", "stage time", "DSO"... mean exactly) are in
``docs/analytics.md``; each function's docstring repeats the one it implements.

Dialects:
  * percentiles: ``percentile_cont(p) WITHIN GROUP (ORDER BY x)`` on PostgreSQL; on SQLite the
    same linear interpolation from ``ROW_NUMBER()``/``COUNT()`` window functions;
  * day differences: ``EXTRACT(EPOCH ...)`` on PostgreSQL, ``julianday()`` on SQLite;
  * money: NUMERIC on PostgreSQL; on SQLite, where ``Money`` is a decimal string, sums run over
    integer ten-thousandths (``ROUND(x * 10000)``), so they are exact on both.

Filters: ``customer`` (name substring, case-insensitive, or exact CRM id) and ``playbook`` restrict
contracts; ``owner`` is the milestone's owner for stage metrics and the contract's (sales) owner for
contract and money metrics; ``department`` restricts stage metrics to milestones of that department.
Periods are read in ``BUSINESS_TIMEZONE``.
"""

from __future__ import annotations

import csv
import io
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from time import monotonic
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field
from sqlalchemy import (
    Float,
    Integer,
    Select,
    String,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from api.platform.problems import Problem
from core.money import MoneyError, minor_units
from models import Contract, ContractEvent, Customer, Installment, Milestone, Payment
from models.types import UTCDateTime
from workflows.types import MILESTONE_KINDS

C = Contract.__table__
M = Milestone.__table__
I = Installment.__table__  # noqa: E741 - the installments table
P = Payment.__table__
CU = Customer.__table__

# Stages are milestone kinds, in the order a contract goes through them (the workflow's order).
STAGE_ORDER = list(MILESTONE_KINDS)
# Receivables ageing: days past due, (label, lower bound exclusive, upper bound inclusive).
AGEING_BUCKETS: list[tuple[str, float | None, float | None]] = [
    ("0-30", None, 30.0),
    ("31-60", 30.0, 60.0),
    ("61-90", 60.0, 90.0),
    ("90+", 90.0, None),
]
CYCLE_HISTOGRAM_DAYS = 15  # width of a fulfilment-cycle histogram bar
# Years 1900-2999: year 0 or 9999-Q4 would take date arithmetic out of range (a 500, found by schemathesis).
_YEAR = r"(19|2[0-9])[0-9]{2}"
PERIOD_PATTERN = r"^(all|last-12-months|" + _YEAR + r"(-Q[1-4]|-(0[1-9]|1[0-2]))?)$"
QUARTER_PATTERN = r"^" + _YEAR + r"-Q[1-4]$"
EARLIEST, LATEST = date(1900, 1, 1), date(2999, 12, 31)  # the same bounds for from/to dates
_UNITS = 10000  # SQLite money arithmetic in ten-thousandths (Money is NUMERIC(20, 4))


# ---------------------------------------------------------------- filters and periods
@dataclass(frozen=True)
class Filters:
    """What to count: a period [start, end) (None: unbounded) and optional scope filters."""

    start: datetime | None
    end: datetime | None
    now: datetime
    label: str
    customer: str | None = None
    owner: str | None = None
    department: str | None = None
    playbook: str | None = None

    @property
    def as_of(self) -> datetime:
        """The moment open items are measured at: the period's end, or now if that is earlier."""
        return min(self.end, self.now) if self.end is not None else self.now

    def shifted(self, start: datetime, end: datetime, label: str) -> Filters:
        return replace(self, start=start, end=end, label=label)


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(timezone.utc)


def quarter_bounds(quarter: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    year, q = int(quarter[:4]), int(quarter[-1])
    first = date(year, 3 * (q - 1) + 1, 1)
    nxt = date(year + (q == 4), (3 * q) % 12 + 1, 1)
    return _local_midnight(first, tz), _local_midnight(nxt, tz)


def previous_quarter(quarter: str) -> str:
    year, q = int(quarter[:4]), int(quarter[-1])
    return f"{year - 1}-Q4" if q == 1 else f"{year}-Q{q - 1}"


def quarter_of(moment: datetime, tz: ZoneInfo) -> str:
    local = moment.astimezone(tz)
    return f"{local.year}-Q{(local.month - 1) // 3 + 1}"


def last_complete_quarter(now: datetime, tz: ZoneInfo) -> str:
    return previous_quarter(quarter_of(now, tz))


def period_bounds(period: str, tz: ZoneInfo, now: datetime) -> tuple[datetime | None, datetime | None, str]:
    """``all``, ``last-12-months``, ``2026``, ``2026-Q3`` or ``2026-09`` → [start, end) in UTC."""
    if period == "all":
        return None, None, "all"
    if period == "last-12-months":
        today = now.astimezone(tz).date()
        try:
            start_day = today.replace(year=today.year - 1)
        except ValueError:  # 29 February
            start_day = today.replace(year=today.year - 1, day=28)
        return _local_midnight(start_day + timedelta(days=1), tz), now, "last-12-months"
    if re.fullmatch(QUARTER_PATTERN, period):
        start, end = quarter_bounds(period, tz)
        return start, end, period
    if re.fullmatch(r"\d{4}-\d{2}", period):
        year, month = int(period[:4]), int(period[5:])
        nxt = date(year + (month == 12), month % 12 + 1, 1)
        return _local_midnight(date(year, month, 1), tz), _local_midnight(nxt, tz), period
    year = int(period)
    return _local_midnight(date(year, 1, 1), tz), _local_midnight(date(year + 1, 1, 1), tz), period


def make_filters(
    *,
    tz: ZoneInfo,
    period: str | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
    customer: str | None = None,
    owner: str | None = None,
    department: str | None = None,
    playbook: str | None = None,
    now: datetime | None = None,
) -> Filters:
    """Filters from query parameters; a contradiction is a 422 problem.  ``to`` is inclusive
    (the period runs to the end of that day); neither ``period`` nor dates: the last 12 months."""
    now = now or datetime.now(timezone.utc)
    if period is not None and (date_from is not None or date_to is not None):
        raise Problem(422, "give either 'period' or 'from'/'to', not both", slug="validation",
                      errors=[{"field": "period", "message": "cannot be combined with from/to"}])
    if period is not None:
        if not re.fullmatch(PERIOD_PATTERN, period):
            raise Problem(422, f"period {period!r} is not one of: all, last-12-months, YYYY, YYYY-Qn, YYYY-MM",
                          slug="validation", errors=[{"field": "period", "message": "invalid period"}])
        start, end, label = period_bounds(period, tz, now)
    elif date_from is not None or date_to is not None:
        for name, value in (("from", date_from), ("to", date_to)):
            if value is not None and not EARLIEST <= value <= LATEST:
                raise Problem(422, f"'{name}' ({value}) is outside {EARLIEST}..{LATEST}", slug="validation",
                              errors=[{"field": name, "message": "date out of range"}])
        if date_from is not None and date_to is not None and date_from > date_to:
            raise Problem(422, f"'from' ({date_from}) is after 'to' ({date_to})", slug="validation",
                          errors=[{"field": "from", "message": "must not be after 'to'"}])
        start = _local_midnight(date_from, tz) if date_from else None
        end = _local_midnight(date_to + timedelta(days=1), tz) if date_to else None
        label = f"{date_from or '…'}..{date_to or '…'}"
    else:
        start, end, label = period_bounds("last-12-months", tz, now)

    def clean(value: str | None) -> str | None:
        value = value.strip() if value else None
        return value or None

    return Filters(start=start, end=end, now=now, label=label, customer=clean(customer), owner=clean(owner),
                   department=clean(department), playbook=clean(playbook))


# ---------------------------------------------------------------- response models
class FiltersOut(BaseModel):
    period: str = Field(description="The period's label: all, last-12-months, 2026, 2026-Q3, 2026-09 or from..to")
    start: datetime | None = Field(description="Inclusive start (UTC); null: unbounded")
    end: datetime | None = Field(description="Exclusive end (UTC); null: unbounded")
    as_of: datetime = Field(description="Open items are measured at this moment: the period's end or now")
    customer: str | None = None
    owner: str | None = None
    department: str | None = None
    playbook: str | None = None


class DistributionOut(BaseModel):
    count: int = Field(description="How many values")
    avg_days: float | None = None
    p50_days: float | None = None
    p90_days: float | None = None


class PlaybookCycleOut(DistributionOut):
    playbook: str | None


class HistogramBarOut(BaseModel):
    from_days: int
    to_days: int
    count: int


class CycleOut(BaseModel):
    """Fulfilment cycle: signature (effective_at) → the payment that settled the contract."""

    filters: FiltersOut
    overall: DistributionOut
    by_playbook: list[PlaybookCycleOut]
    histogram: list[HistogramBarOut]


class StageOut(BaseModel):
    stage: str = Field(description="Milestone kind")
    completed: int = Field(description="Milestones of this stage completed in the period")
    avg_days: float | None = Field(description="Mean stage time in days")
    p50_days: float | None
    p90_days: float | None
    on_time: int = Field(description="Of those completed with a due date: completed_at <= due_at")
    with_due_date: int
    on_time_rate: float | None
    due: int = Field(description="Milestones of this stage that fell due in the period (by as_of)")
    late: int = Field(description="Of those: completed after the due date, or still open")
    late_rate: float | None


class StagesOut(BaseModel):
    filters: FiltersOut
    stages: list[StageOut]
    on_time_rate: float | None = Field(description="All stages together")
    late_rate: float | None = Field(description="All stages together")


class AgeingBucketOut(BaseModel):
    bucket: Literal["0-30", "31-60", "61-90", "90+"]
    amount: str
    installments: int


class CurrencyReceivablesOut(BaseModel):
    currency: str
    overdue: str = Field(description="Owed on installments already due, as of as_of")
    not_due: str = Field(description="Owed on installments not yet due")
    ageing: list[AgeingBucketOut]
    billed: str = Field(description="Amounts of installments that fell due in the period")
    dso_days: float | None = Field(description="overdue / billed × days in the period")


class ReceivablesOut(BaseModel):
    filters: FiltersOut
    period_days: float | None
    currencies: list[CurrencyReceivablesOut]


class StageCostOut(BaseModel):
    stage: str
    milestones: int
    planned: str
    actual: str
    overrun: float | None = Field(description="sum(actual) / sum(planned) - 1")
    over_budget: int = Field(description="Milestones whose actual cost exceeds the planned cost")


class CurrencyCostOut(BaseModel):
    currency: str
    milestones: int
    planned: str
    actual: str
    overrun: float | None
    over_budget: int
    stages: list[StageCostOut]


class CostsOut(BaseModel):
    filters: FiltersOut
    currencies: list[CurrencyCostOut]


class ScoreOut(BaseModel):
    score: int = Field(ge=1, le=5)
    count: int


class SatisfactionOut(BaseModel):
    filters: FiltersOut
    count: int
    average: float | None
    distribution: list[ScoreOut]


class BottleneckOut(BaseModel):
    rank: int
    stage: str
    due: int = Field(description="Milestones of this stage due in the period (by as_of)")
    late: int = Field(description="Of those, with any delay")
    open_late: int = Field(description="Still open and past due at as_of")
    total_delay_days: float
    mean_delay_days: float | None = Field(description="total delay / milestones due")
    mean_delay_late_days: float | None = Field(description="total delay / late milestones")
    top_owner: str | None = Field(description="Whose queue holds most of this stage's delay")
    top_owner_delay_days: float | None
    top_owner_share: float | None


class BottlenecksOut(BaseModel):
    filters: FiltersOut
    stages: list[BottleneckOut]


class ReportRowOut(BaseModel):
    section: str
    metric: str
    unit: str
    # int first: a count stays a whole number in the JSON (35, not 35.0)
    current: int | float | str | None
    previous: int | float | str | None
    change: int | float | None = Field(description="current - previous, for numbers")


class QuarterlyReportOut(BaseModel):
    quarter: str
    previous_quarter: str
    current: FiltersOut
    previous: FiltersOut
    rows: list[ReportRowOut]


# ---------------------------------------------------------------- dialect helpers
def _days(d: str, later, earlier):
    """later - earlier in (fractional) days."""
    if d == "sqlite":
        return func.julianday(later) - func.julianday(earlier)
    # date_part gives double precision (EXTRACT gives numeric since PostgreSQL 14: several times
    # slower); one date_part of the interval rather than two of the timestamps: the same microseconds.
    return func.date_part("epoch", later - earlier) / 86400.0


def _ts(value: datetime):
    return literal(value, UTCDateTime())


def _least(d: str, a, b):
    return func.min(a, b) if d == "sqlite" else func.least(a, b)


def _floor(d: str, x):
    if d == "sqlite":
        t = cast(x, Integer)
        return case((x < t, t - 1), else_=t)
    return cast(func.floor(x), Integer)


def _units(d: str, col):
    """Money in SQL arithmetic: exact NUMERIC on PostgreSQL, integer ten-thousandths on SQLite."""
    if d == "sqlite":
        return cast(func.round(cast(col, Float) * _UNITS), Integer)
    return col


def _money(d: str, value: Any, currency: str) -> str:
    amount = Decimal(0) if value is None else Decimal(value)
    if d == "sqlite":
        amount = amount / _UNITS
    try:
        places = minor_units(currency)
    except MoneyError:
        places = 2
    return str(amount.quantize(Decimal(1).scaleb(-places)))


def _overrun(actual: Decimal, planned: Decimal) -> float | None:
    """Actual over planned, less one (0.1: ten per cent over budget); None without a plan."""
    ratio = _ratio(actual, planned)
    return ratio - 1 if ratio is not None else None


def _ratio(num: Any, den: Any) -> float | None:
    return None if not den else float(num) / float(den)


def _in_period(col, f: Filters) -> list:
    conds = []
    if f.start is not None:
        conds.append(col >= f.start)
    if f.end is not None:
        conds.append(col < f.end)
    return conds


def _contract_scope(f: Filters, *, owner: bool) -> list:
    conds = []
    if f.customer:
        conds.append(or_(
            C.c.customer_name.icontains(f.customer, autoescape=True),
            C.c.customer_id.in_(select(CU.c.id).where(CU.c.external_id == f.customer)),
        ))
    if f.playbook:
        conds.append(C.c.playbook == f.playbook)
    if owner and f.owner:
        conds.append(C.c.owner == f.owner)
    return conds


def _milestone_scope(f: Filters, m=M, *, waived: bool = True) -> list:
    """Department and owner filters; waived milestones left out (``waived=False``: the statement
    already asks for another status)."""
    conds = [m.c.status != "waived"] if waived else []
    if f.department:
        conds.append(m.c.department == f.department)
    if f.owner:
        conds.append(m.c.owner == f.owner)
    return conds


def _closed_at():
    """The milestone's contract's closed_at (a correlated lookup, only evaluated for open items)."""
    cc = C.alias("cc")
    return select(cc.c.closed_at).where(cc.c.id == M.c.contract_id).correlate(M).scalar_subquery()


def _open_until(d: str, as_of: datetime):
    """Until when an open milestone counts as owed: as_of, or its contract's closing if earlier
    (a terminated contract chases nobody)."""
    return _least(d, _ts(as_of), func.coalesce(_closed_at(), _ts(as_of)))


def _due_window(f: Filters) -> list:
    """Milestones due in the period, before as_of.

    Of these, the ones that *fell due* (were still owed then) are the completed ones and the open
    ones whose contract was still open at their due date.  The queries take them in parts that
    each range-scan an index without a lookup per row: completed (``completed_at`` set; before
    as_of, or after it) and open (``completed_at`` null: the partial index of open milestones),
    where only the open ones, and those completed after as_of, need their contract's closing."""
    return [M.c.due_at < f.as_of, *_in_period(M.c.due_at, f)]


def _sum_days(d: str, later, earlier, where):
    """The sum of later - earlier in days over the rows where ``where`` holds (an aggregate)."""
    if d == "sqlite":
        return func.sum(func.julianday(later) - func.julianday(earlier)).filter(where)
    # Summed as an interval (exact microseconds), turned into days once per group.
    return func.date_part("epoch", func.sum(later - earlier).filter(where)) / 86400.0


def _needs_contracts(f: Filters) -> bool:
    return bool(f.customer or f.playbook)


def _scoped(stmt: Select, scope: list) -> Select:
    """A milestone statement restricted to the contracts in scope (customer, playbook), if any."""
    return stmt.join(C, C.c.id == M.c.contract_id).where(*scope) if scope else stmt


def _per_stage(make) -> Any:
    """UNION ALL of ``make(kind)`` restricted to each stage: each part range-scans an index led by
    ``kind`` (no hashing or sorting of the whole period by stage; on PostgreSQL the parts run in
    parallel workers).  Kinds are the API's MilestoneKind values: STAGE_ORDER lists them all."""
    return union_all(*[make(kind).where(M.c.kind == kind) for kind in STAGE_ORDER])


def _stats(conn: Connection, base: Select, value: str, groups: tuple[str, ...] = (),
           ps: tuple[float, ...] = (0.5, 0.9), extra=None, domain: list[str] | None = None,
           not_null: bool = False) -> list[dict[str, Any]]:
    """count, avg and percentiles (linear interpolation, as percentile_cont) of ``value`` per group,
    and the aggregates ``extra(v)`` over the rows (v: ``base`` as a subquery), in one statement.
    Rows whose value is NULL are left out (``not_null``: the value never is, count rows).

    ``domain``: the values the single group column can take.  On PostgreSQL the statement is then a
    UNION ALL of one aggregate per value, each range-scanning an index led by the group column:
    no sort of the whole period by group first (measured: about five times less CPU), and the
    parts run in parallel workers."""
    extra = extra or (lambda v: [])
    v = base.subquery("v")
    x = v.c[value]
    gcols = [v.c[g] for g in groups]
    wanted: Any = literal_column("ARRAY[" + ", ".join(repr(float(p)) for p in ps) + "]::float8[]")
    pcts = [func.percentile_cont(wanted).within_group(x).label("pcts")] if ps else []
    n = func.count() if not_null else func.count(x)
    if conn.dialect.name == "postgresql" and domain and len(groups) == 1:
        g = v.c[groups[0]]
        parts = [
            select(literal(value_, String()).label(groups[0]), n.label("n"), cast(func.avg(x), Float).label("avg"),
                   *extra(v), *pcts)
            .where(g == value_)
            for value_ in domain
        ]
        stmt: Any = union_all(*parts)  # a union, or a select below: both group_by and execute
        gcols = []
    elif conn.dialect.name == "postgresql":
        # Groups are sorted for the ordered-set aggregate: byte order is enough, and much cheaper.
        gcols = [g.collate("C").label(g.name) if isinstance(g.type, String) else g for g in gcols]
        # One ordered-set aggregate for all the percentiles: one sort per group.
        stmt = select(*gcols, n.label("n"), cast(func.avg(x), Float).label("avg"), *extra(v),
                      *pcts)  # the aggregates skip NULLs
    else:
        part = gcols or None
        r = select(
            *v.c,
            (func.row_number().over(partition_by=part, order_by=x) - 1).label("rn"),
            func.count().over(partition_by=part).label("cnt"),
        ).where(x.is_not(None)).subquery("r")
        rgcols = [r.c[g] for g in groups]
        cnt = func.max(r.c.cnt)
        cols = [*rgcols, func.count(r.c[value]).label("n"), cast(func.avg(r.c[value]), Float).label("avg"), *extra(r)]
        for p in ps:
            pos = p * (cnt - 1)
            lo = cast(pos, Integer)
            lo_val = func.max(case((r.c.rn == cast(p * (r.c.cnt - 1), Integer), r.c[value])))
            hi_val = func.max(case((r.c.rn == cast(p * (r.c.cnt - 1), Integer) + 1, r.c[value])))
            cols.append(cast(lo_val + (pos - lo) * (func.coalesce(hi_val, lo_val) - lo_val), Float)
                        .label(f"p{round(p * 100)}"))
        stmt = select(*cols)
        gcols = rgcols
    if gcols:
        stmt = stmt.group_by(*gcols)
    rows = [dict(row._mapping) for row in conn.execute(stmt)]
    for row in rows:
        if conn.dialect.name == "postgresql" and ps:  # percentile_cont(ARRAY[...]) answered an array
            for p, value_ in zip(ps, row.pop("pcts") or [None] * len(ps), strict=True):
                row[f"p{round(p * 100)}"] = None if value_ is None else float(value_)
        for p in (0.5, 0.9):
            row.setdefault(f"p{round(p * 100)}", None)  # not asked for
    return [row for row in rows if row["n"]] if domain else rows


def _distribution(row: dict[str, Any] | None) -> dict[str, Any]:
    if not row or not row.get("n"):
        return {"count": 0, "avg_days": None, "p50_days": None, "p90_days": None}
    return {"count": int(row["n"]), "avg_days": row["avg"], "p50_days": row["p50"], "p90_days": row["p90"]}


@contextmanager
def _planner(conn: Connection, **settings: bool):
    """PostgreSQL planner settings for one statement (SET LOCAL, put back after it), where the
    planner's estimates lead it to a plan measured slower.  ``enable_seqscan=False``: when a
    customer/playbook/owner filter makes the money metrics join contracts, they hash them from the
    narrow ``ix_contracts_id_analytics`` (index-only) rather than from the whole contracts table
    (measured: the hash is built in half the time); without one they read the item's own currency
    from an index-only range (migration 0012) and the setting keeps it that way."""
    if conn.dialect.name != "postgresql" or not settings:
        yield
        return
    for name, on in settings.items():
        conn.execute(text(f"SET LOCAL {name} = {'on' if on else 'off'}"))
    try:
        yield
    finally:
        for name in settings:
            conn.execute(text(f"SET LOCAL {name} = on"))


def _stage_key(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def filters_out(f: Filters) -> FiltersOut:
    return FiltersOut(period=f.label, start=f.start, end=f.end, as_of=f.as_of, customer=f.customer,
                      owner=f.owner, department=f.department, playbook=f.playbook)


# ---------------------------------------------------------------- metrics
def cycle(conn: Connection, f: Filters, *, detail: bool = True) -> CycleOut:
    """Fulfilment cycle of the contracts settled in the period: days from ``effective_at`` to
    ``settled_at``, the ``received_at`` of the payment that brought the running total (payments in
    ``received_at`` order) to the contract amount (kept by the projection).  ``detail=False``: the
    overall figures only (no playbooks, no histogram: what the quarterly report shows)."""
    d = conn.dialect.name
    base = (
        select(C.c.playbook, cast(_days(d, C.c.settled_at, C.c.effective_at), Float).label("days"))
        .where(C.c.settled_at.is_not(None), *_in_period(C.c.settled_at, f), *_contract_scope(f, owner=True))
    )
    overall = _stats(conn, base, "days", not_null=True)
    by_playbook: list[dict[str, Any]] = []
    bars: Sequence[Any] = []
    if detail:
        by_playbook = _stats(conn, base, "days", ("playbook",), not_null=True)
        v = base.subquery("v")
        bar = _floor(d, v.c.days / CYCLE_HISTOGRAM_DAYS).label("bar")
        bars = conn.execute(select(bar, func.count().label("n")).group_by(bar).order_by(bar)).all()
    return CycleOut(
        filters=filters_out(f),
        overall=DistributionOut(**_distribution(overall[0] if overall else None)),
        by_playbook=sorted(
            (PlaybookCycleOut(playbook=row["playbook"], **_distribution(row)) for row in by_playbook),
            key=lambda x: x.playbook or "",
        ),
        histogram=[HistogramBarOut(from_days=int(b) * CYCLE_HISTOGRAM_DAYS, to_days=(int(b) + 1) * CYCLE_HISTOGRAM_DAYS,
                                   count=int(n)) for b, n in bars],
    )


def stages(conn: Connection, f: Filters, *, percentiles: bool = True) -> StagesOut:
    """Per stage (milestone kind), for milestones completed (``done``) in the period: stage time =
    ``completed_at`` - ``started_at`` (the latest ``completed_at`` of an earlier milestone, by
    position, of the same contract, or the contract's ``effective_at`` for the first; kept by the
    projection), 0 if negative; on-time = ``completed_at <= due_at``.  Late rate: of the
    milestones that fell due in the period (before as_of), those completed after ``due_at`` or
    still open.  Waived milestones are left out.  ``percentiles=False``: no p50/p90 (the quarterly
    report shows averages and rates only; the percentile sorts are the largest part of the cost)."""
    d = conn.dialect.name
    base = (
        select(
            M.c.kind,
            # completed_at - started_at, 0 if negative: computed by the database on the row (a
            # generated column, migration 0010), read from the (kind, completed_at) index.
            M.c.stage_days.label("days"),
            M.c.completed_at,
            M.c.due_at,
        )
        .where(M.c.status == "done", M.c.completed_at.is_not(None), *_in_period(M.c.completed_at, f),
               *_milestone_scope(f, waived=False))
    )
    if _needs_contracts(f):
        base = base.join(C, C.c.id == M.c.contract_id).where(*_contract_scope(f, owner=False))

    def counts(v):
        return [func.count().filter(v.c.completed_at <= v.c.due_at).label("on_time"),
                func.count(v.c.due_at).label("with_due")]

    # Kinds are the API's MilestoneKind values (schemas.MilestoneKind): STAGE_ORDER lists them all.
    times = {row["kind"]: row for row in _stats(conn, base, "days", ("kind",), extra=counts, domain=STAGE_ORDER,
                                                not_null=True, ps=(0.5, 0.9) if percentiles else ())}

    # Fell due in the period: the completed ones (late if completed after the due date), per stage
    # over the (kind, due_at) index; and the open ones (all late), from the partial index of open
    # milestones, owed while their contract was open.
    scope = _contract_scope(f, owner=False) if _needs_contracts(f) else []
    completed = _per_stage(lambda kind: _scoped(
        select(literal(kind, String()).label("kind"), func.count().label("due"),
               func.count().filter(M.c.completed_at > M.c.due_at).label("late"))
        .where(*_due_window(f), M.c.completed_at.is_not(None), *_milestone_scope(f)), scope))
    still_open = _scoped(
        select(M.c.kind, func.count().label("due"), func.count().label("late"))
        .where(*_due_window(f), M.c.completed_at.is_(None), M.c.due_at < _open_until(d, f.as_of),
               *_milestone_scope(f)), scope).group_by(M.c.kind)
    dues: dict[str, list[int]] = {}
    for q in (completed, still_open):
        for row in conn.execute(q):
            if not row.due:
                continue  # a stage with nothing due (the per-stage parts answer a row each)
            acc = dues.setdefault(row.kind, [0, 0])
            acc[0] += int(row.due)
            acc[1] += int(row.late or 0)

    out = []
    for kind in sorted(set(times) | set(dues), key=_stage_key):
        t, du = times.get(kind), dues.get(kind)
        dist = _distribution(t)
        n_on_time = int(t["on_time"] or 0) if t else 0
        n_with_due = int(t["with_due"] or 0) if t else 0
        n_due, n_late = du or (0, 0)
        out.append(StageOut(
            stage=kind, completed=dist["count"], avg_days=dist["avg_days"], p50_days=dist["p50_days"],
            p90_days=dist["p90_days"], on_time=n_on_time, with_due_date=n_with_due,
            on_time_rate=_ratio(n_on_time, n_with_due), due=n_due, late=n_late, late_rate=_ratio(n_late, n_due),
        ))
    return StagesOut(
        filters=filters_out(f),
        stages=out,
        on_time_rate=_ratio(sum(s.on_time for s in out), sum(s.with_due_date for s in out)),
        late_rate=_ratio(sum(s.late for s in out), sum(s.due for s in out)),
    )


def _owed_at(d: str, as_of: datetime):
    """The installments still owed at ``as_of`` (due date set), with what each owed then: amount -
    paid if still open now, the whole amount if settled after as_of (partial payments of such an
    installment before as_of are not known to the read model: see docs/analytics.md); settled by
    as_of: not there.  Two index-only ranges of ``ix_installments_paid_at`` (open; settled after
    as_of) rather than one bitmap scan of the table for both."""
    return union_all(
        select(I.c.contract_id, I.c.currency, I.c.due_at,
               (_units(d, I.c.amount) - _units(d, I.c.paid)).label("owed"))
        .where(I.c.paid_at.is_(None), I.c.due_at.is_not(None)),
        select(I.c.contract_id, I.c.currency, I.c.due_at, _units(d, I.c.amount).label("owed"))
        .where(I.c.paid_at > as_of, I.c.due_at.is_not(None)),
    ).subquery("o")


def receivables(conn: Connection, f: Filters) -> ReceivablesOut:
    """Per currency, as of as_of: amounts owed on installments (ageing by days past due: 0-30,
    31-60, 61-90, 90+; and not yet due), and DSO = overdue / billed × days in the period, where
    billed = amounts of the installments that fell due in the period (up to as_of)."""
    d = conn.dialect.name
    as_of = f.as_of
    o = _owed_at(d, as_of)
    # Days past due as_of - due_at <= N  <=>  due_at >= as_of - N days: compared on the timestamps.
    bucket = case(
        (o.c.due_at > as_of, "not_due"),
        *[(o.c.due_at >= as_of - timedelta(days=upper), label) for label, _, upper in AGEING_BUCKETS
          if upper is not None],
        else_=AGEING_BUCKETS[-1][0],
    ).label("bucket")
    # Items carry their contract's currency: contracts are joined only for a customer, playbook
    # or owner filter.
    scope = _contract_scope(f, owner=True)
    owed_from = o.join(C, C.c.id == o.c.contract_id) if scope else o
    billed_from = I.join(C, C.c.id == I.c.contract_id) if scope else I
    with _planner(conn, enable_seqscan=False):
        rows = conn.execute(
            select(o.c.currency, bucket, func.sum(o.c.owed).label("owed"), func.count().filter(o.c.owed > 0).label("n"))
            .select_from(owed_from)
            .where(*scope)
            .group_by(o.c.currency, bucket)
        ).all()
        billed_rows = conn.execute(
            select(I.c.currency, func.sum(_units(d, I.c.amount)).label("billed"))
            .select_from(billed_from)
            .where(I.c.due_at.is_not(None), I.c.due_at <= as_of, *_in_period(I.c.due_at, f), *scope)
            .group_by(I.c.currency)
        ).all()
    billed = {row.currency: row.billed for row in billed_rows}
    by_currency: dict[str, dict[str, tuple[Any, int]]] = {}
    for row in rows:
        by_currency.setdefault(row.currency, {})[row.bucket] = (row.owed, int(row.n or 0))
    period_days = None
    if f.start is not None:
        period_days = (as_of - f.start).total_seconds() / 86400
    out = []
    for currency in sorted(set(by_currency) | set(billed)):
        buckets = by_currency.get(currency, {})
        overdue = sum((Decimal(buckets[b][0] or 0) for b in buckets if b != "not_due"), Decimal(0))
        bill = billed.get(currency)
        dso = None
        if period_days is not None and bill:
            dso = float(overdue) / float(bill) * period_days
        out.append(CurrencyReceivablesOut(
            currency=currency,
            overdue=_money(d, overdue, currency),
            not_due=_money(d, buckets.get("not_due", (0, 0))[0], currency),
            ageing=[AgeingBucketOut(bucket=label, amount=_money(d, buckets.get(label, (0, 0))[0], currency),
                                    installments=buckets.get(label, (0, 0))[1]) for label, _, _ in AGEING_BUCKETS],
            billed=_money(d, bill, currency),
            dso_days=dso,
        ))
    return ReceivablesOut(filters=filters_out(f), period_days=period_days, currencies=out)


def costs(conn: Connection, f: Filters) -> CostsOut:
    """Cost overrun per currency and stage over milestones completed in the period with both a
    planned and an actual cost: sum(actual) / sum(planned) - 1."""
    d = conn.dialect.name
    planned, actual = _units(d, M.c.planned_cost), _units(d, M.c.actual_cost)
    scope = _contract_scope(f, owner=False)  # contracts joined only for these filters
    stmt = (
        select(
            M.c.currency, M.c.kind,
            func.count().label("n"),
            func.sum(planned).label("planned"),
            func.sum(actual).label("actual"),
            func.sum(case((actual > planned, 1), else_=0)).label("over"),
        )
        .select_from(M.join(C, C.c.id == M.c.contract_id) if scope else M)
        .where(M.c.planned_cost.is_not(None), M.c.actual_cost.is_not(None), *_in_period(M.c.completed_at, f),
               M.c.completed_at.is_not(None), *_milestone_scope(f), *scope)
        .group_by(M.c.currency, M.c.kind)
    )
    per: dict[str, list] = {}
    with _planner(conn, enable_seqscan=False):
        result = conn.execute(stmt).all()
    for row in result:
        per.setdefault(row.currency, []).append(row)
    out = []
    for currency in sorted(per):
        rows = sorted(per[currency], key=lambda r: _stage_key(r.kind))
        tp = sum((Decimal(r.planned) for r in rows), Decimal(0))
        ta = sum((Decimal(r.actual) for r in rows), Decimal(0))
        out.append(CurrencyCostOut(
            currency=currency, milestones=sum(int(r.n) for r in rows), planned=_money(d, tp, currency),
            actual=_money(d, ta, currency), overrun=_overrun(ta, tp),
            over_budget=sum(int(r.over) for r in rows),
            stages=[StageCostOut(stage=r.kind, milestones=int(r.n), planned=_money(d, r.planned, currency),
                                 actual=_money(d, r.actual, currency),
                                 overrun=(float(r.actual) / float(r.planned) - 1) if r.planned else None,
                                 over_budget=int(r.over)) for r in rows],
        ))
    return CostsOut(filters=filters_out(f), currencies=out)


def satisfaction(conn: Connection, f: Filters) -> SatisfactionOut:
    """Customer satisfaction: scores (1-5) captured when customer acceptance was completed in the
    period; average and distribution."""
    stmt = (
        select(M.c.satisfaction, func.count().label("n"))
        .where(M.c.kind == "customer_acceptance", M.c.satisfaction.is_not(None), M.c.completed_at.is_not(None),
               *_in_period(M.c.completed_at, f), *_milestone_scope(f))
        .group_by(M.c.satisfaction)
    )
    if _needs_contracts(f):
        stmt = stmt.join(C, C.c.id == M.c.contract_id).where(*_contract_scope(f, owner=False))
    counts = {int(row.satisfaction): int(row.n) for row in conn.execute(stmt)}
    total = sum(counts.values())
    weighted = sum(score * n for score, n in counts.items())
    return SatisfactionOut(
        filters=filters_out(f),
        count=total,
        average=(weighted / total) if total else None,
        distribution=[ScoreOut(score=s, count=counts.get(s, 0)) for s in range(1, 6)],
    )


def bottlenecks(conn: Connection, f: Filters) -> BottlenecksOut:
    """Per stage, over milestones due in the period (``due_at`` before as_of): delay = the positive
    part of (completion, or as_of if open or completed later) - ``due_at``, in days; ranked by total
    delay; with the owner whose milestones hold the largest part of it."""
    d = conn.dialect.name
    as_of = f.as_of
    scope = _contract_scope(f, owner=False) if _needs_contracts(f) else []
    # Completed by as_of: delay = completion - due date, no lookup; per stage, a range of the
    # (kind, due_at) index.
    late = M.c.completed_at > M.c.due_at
    done = _per_stage(lambda kind: _scoped(
        select(literal(kind, String()).label("kind"), M.c.owner, func.count().label("due"),
               func.count().filter(late).label("late"), literal(0).label("open_late"),
               _sum_days(d, M.c.completed_at, M.c.due_at, late).label("delay"))
        .where(*_due_window(f), M.c.completed_at < as_of, *_milestone_scope(f)), scope).group_by(M.c.owner))
    # Still owed at as_of: their delay runs to as_of, or to the contract's closing if earlier (few
    # rows: each looks its contract up).  Completed after as_of (a past period): per stage, the
    # planner takes the shorter range, the stage's due dates in the period or the completions
    # since as_of (none when as_of is now); open: the partial index of open milestones, counted
    # while their contract was open.
    until = _open_until(d, as_of)
    later = [_scoped(select(M.c.kind, M.c.owner, M.c.due_at, until.label("until"))
                     .where(*_due_window(f), M.c.completed_at >= as_of, *_milestone_scope(f), M.c.kind == kind), scope)
             for kind in STAGE_ORDER]
    still_open = _scoped(select(M.c.kind, M.c.owner, M.c.due_at, until.label("until"))
                         .where(*_due_window(f), M.c.completed_at.is_(None), M.c.due_at < until, *_milestone_scope(f)),
                         scope)
    owed = union_all(*later, still_open).subquery("owed")
    late_owed = owed.c.until > owed.c.due_at
    still = (
        select(owed.c.kind, owed.c.owner, func.count().label("due"), func.count().filter(late_owed).label("late"),
               func.count().filter(late_owed).label("open_late"),
               _sum_days(d, owed.c.until, owed.c.due_at, late_owed).label("delay"))
        .group_by(owed.c.kind, owed.c.owner)
    )
    # Per stage and owner: summed here over the two parts (a few rows each).
    per: dict[str, dict[str, list[float]]] = {}
    for stmt in (done, still):
        for r in conn.execute(stmt):
            acc = per.setdefault(r.kind, {}).setdefault(r.owner, [0, 0, 0, 0.0])
            acc[0] += int(r.due)
            acc[1] += int(r.late or 0)
            acc[2] += int(r.open_late or 0)
            acc[3] += float(r.delay or 0.0)
    rows = []
    for kind, owners in per.items():
        total = sum(o[3] for o in owners.values())
        # Whose queue: the largest delay; ties: the first owner id (byte order).
        top_owner, top = min(owners.items(), key=lambda kv: (-kv[1][3], kv[0].encode()))
        rows.append((kind, sum(o[0] for o in owners.values()), sum(o[1] for o in owners.values()),
                     sum(o[2] for o in owners.values()), total, top_owner, top[3]))
    rows.sort(key=lambda r: (-r[4], _stage_key(r[0])))
    out = []
    for rank, (kind, due, n_late, open_late, total, top_owner, top_delay) in enumerate(rows, start=1):
        has_delay = total > 0
        out.append(BottleneckOut(
            rank=rank, stage=kind, due=due, late=n_late, open_late=open_late, total_delay_days=total,
            mean_delay_days=total / due if due else None, mean_delay_late_days=total / n_late if n_late else None,
            top_owner=top_owner if has_delay else None,
            top_owner_delay_days=top_delay if has_delay else None,
            top_owner_share=top_delay / total if has_delay else None,
        ))
    return BottlenecksOut(filters=filters_out(f), stages=out)


def signed(conn: Connection, f: Filters) -> list[dict[str, Any]]:
    """Contracts signed (effective_at) in the period: count and amount per currency."""
    d = conn.dialect.name
    rows = conn.execute(
        select(C.c.currency, func.count().label("n"), func.sum(_units(d, C.c.amount)).label("amount"))
        .where(*_in_period(C.c.effective_at, f), *_contract_scope(f, owner=True))
        .group_by(C.c.currency)
        .order_by(C.c.currency)
    ).all()
    return [{"currency": r.currency, "count": int(r.n), "amount": _money(d, r.amount, r.currency)} for r in rows]


# ---------------------------------------------------------------- the quarterly review
@dataclass
class QuarterMetrics:
    filters: Filters
    signed: list[dict[str, Any]]
    cycle: CycleOut
    stages: StagesOut
    receivables: ReceivablesOut
    costs: CostsOut
    satisfaction: SatisfactionOut
    bottlenecks: BottlenecksOut


def quarter_metrics(conn: Connection, f: Filters) -> QuarterMetrics:
    """Each metric of one quarter, with only the figures the report shows (no stage percentiles,
    no cycle per playbook or histogram)."""
    return QuarterMetrics(f, signed(conn, f), cycle(conn, f, detail=False), stages(conn, f, percentiles=False),
                          receivables(conn, f), costs(conn, f), satisfaction(conn, f), bottlenecks(conn, f))


def quarter_filters(f: Filters, quarter: str, tz: ZoneInfo) -> tuple[Filters, Filters]:
    prev = previous_quarter(quarter)
    return f.shifted(*quarter_bounds(quarter, tz), quarter), f.shifted(*quarter_bounds(prev, tz), prev)


def quarterly_report(conn: Connection, f: Filters, quarter: str, tz: ZoneInfo) -> QuarterlyReportOut:
    """The quarter against the one before, metric by metric."""
    cur_f, prev_f = quarter_filters(f, quarter, tz)
    return assemble_report(quarter_metrics(conn, cur_f), quarter_metrics(conn, prev_f))


def assemble_report(mc: QuarterMetrics, mp: QuarterMetrics) -> QuarterlyReportOut:
    cur_f, prev_f = mc.filters, mp.filters
    quarter, prev = cur_f.label, prev_f.label
    rows: list[ReportRowOut] = []

    def add(section: str, metric: str, unit: str, cur: Any, old: Any) -> None:
        change: int | float | None = None
        if isinstance(cur, int) and isinstance(old, int):
            change = cur - old
        elif isinstance(cur, (int, float)) and isinstance(old, (int, float)):
            change = float(cur) - float(old)
        elif isinstance(cur, str) and isinstance(old, str):
            try:
                change = float(Decimal(cur) - Decimal(old))
            except ArithmeticError:
                change = None
        rows.append(ReportRowOut(section=section, metric=metric, unit=unit, current=cur, previous=old, change=change))

    a, b = mc.signed, mp.signed
    sa, sb = {x["currency"]: x for x in a}, {x["currency"]: x for x in b}
    add("new business", "contracts signed", "contracts", sum(x["count"] for x in a), sum(x["count"] for x in b))
    for cur in sorted(set(sa) | set(sb)):
        add("new business", f"amount signed ({cur})", cur, sa.get(cur, {}).get("amount", "0.00"),
            sb.get(cur, {}).get("amount", "0.00"))

    ca, cb = mc.cycle, mp.cycle
    add("fulfilment", "contracts settled", "contracts", ca.overall.count, cb.overall.count)
    for key, label in (("avg_days", "average"), ("p50_days", "p50"), ("p90_days", "p90")):
        add("fulfilment", f"fulfilment cycle, {label}", "days", getattr(ca.overall, key), getattr(cb.overall, key))

    ta, tb = mc.stages, mp.stages
    add("delivery", "on-time rate (all stages)", "ratio", ta.on_time_rate, tb.on_time_rate)
    add("delivery", "late-delivery rate (all stages)", "ratio", ta.late_rate, tb.late_rate)
    sta, stb = {s.stage: s for s in ta.stages}, {s.stage: s for s in tb.stages}
    for stage in sorted(set(sta) | set(stb), key=_stage_key):
        x, y = sta.get(stage), stb.get(stage)
        add("stages", f"{stage}: average stage time", "days", x.avg_days if x else None, y.avg_days if y else None)
        add("stages", f"{stage}: on-time rate", "ratio", x.on_time_rate if x else None, y.on_time_rate if y else None)

    ra, rb = mc.receivables, mp.receivables
    rxa, rxb = {x.currency: x for x in ra.currencies}, {x.currency: x for x in rb.currencies}
    for cur in sorted(set(rxa) | set(rxb)):
        ra_, rb_ = rxa.get(cur), rxb.get(cur)
        add("receivables", f"DSO ({cur})", "days", ra_.dso_days if ra_ else None, rb_.dso_days if rb_ else None)
        add("receivables", f"overdue at quarter end ({cur})", cur, ra_.overdue if ra_ else None,
            rb_.overdue if rb_ else None)
        for i, (label, _, _) in enumerate(AGEING_BUCKETS):
            add("receivables", f"ageing {label} days ({cur})", cur, ra_.ageing[i].amount if ra_ else None,
                rb_.ageing[i].amount if rb_ else None)

    oa, ob = mc.costs, mp.costs
    cxa, cxb = {x.currency: x for x in oa.currencies}, {x.currency: x for x in ob.currencies}
    for cur in sorted(set(cxa) | set(cxb)):
        ca_, cb_ = cxa.get(cur), cxb.get(cur)
        add("costs", f"cost overrun ({cur})", "ratio", ca_.overrun if ca_ else None, cb_.overrun if cb_ else None)

    qa, qb = mc.satisfaction, mp.satisfaction
    add("customers", "satisfaction, average (1-5)", "score", qa.average, qb.average)
    add("customers", "satisfaction, responses", "count", qa.count, qb.count)

    ba, bb = mc.bottlenecks, mp.bottlenecks
    top_a = ba.stages[0] if ba.stages and ba.stages[0].total_delay_days > 0 else None
    top_b = bb.stages[0] if bb.stages and bb.stages[0].total_delay_days > 0 else None
    rows.append(ReportRowOut(section="bottleneck", metric="stage with the most delay", unit="stage",
                             current=top_a.stage if top_a else None, previous=top_b.stage if top_b else None,
                             change=None))
    rows.append(ReportRowOut(section="bottleneck", metric="whose queue holds most of it", unit="user",
                             current=top_a.top_owner if top_a else None,
                             previous=top_b.top_owner if top_b else None, change=None))
    add("bottleneck", "total delay (all stages)", "days", sum(s.total_delay_days for s in ba.stages),
        sum(s.total_delay_days for s in bb.stages))
    return QuarterlyReportOut(quarter=quarter, previous_quarter=prev, current=filters_out(cur_f),
                              previous=filters_out(prev_f), rows=rows)


def report_csv(report: QuarterlyReportOut) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["section", "metric", "unit", report.quarter, report.previous_quarter, "change"])
    for r in report.rows:
        writer.writerow([r.section, r.metric, r.unit, _cell(r.current), _cell(r.previous), _cell(r.change)])
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.2f}"
    return str(value)


# ---------------------------------------------------------------- the service routes and pages call
def change_marker(conn: Connection) -> Any:
    """A cheap sign that the read model changed: the newest event id (the projection writes a
    contract's events with every change of its snapshot; the event log is append-only), read from
    the primary key's end."""
    return conn.execute(select(func.max(ContractEvent.__table__.c.id))).scalar()


class AnalyticsService:
    """What the routes and pages call: each metric in its own read transaction.

    The quarterly report computes the two quarters at once on two connections, and keeps the
    reports of closed quarters (LRU, ``REPORT_CACHE`` entries) under the read model's change
    marker (and ten minutes at most): a contract that changes makes the next request compute them again."""

    REPORT_CACHE = 64
    REPORT_TTL_SECONDS = 600.0  # and never longer than this (rows written without events, by hand)

    def __init__(self, sessions: sessionmaker[Session], tz: ZoneInfo, *, cache_reports: bool = True) -> None:
        self.sessions = sessions
        self.tz = tz
        self.cache_reports = cache_reports
        self._reports: dict[tuple, tuple[float, QuarterlyReportOut]] = {}
        self._lock = threading.Lock()

    def run(self, fn, *args, parallel: bool = True):
        with self.sessions() as session:
            conn = session.connection()
            if conn.dialect.name == "postgresql":
                # These are short aggregate queries: JIT compilation costs more than it saves
                # (measured); percentiles sort a period's rows: in memory, not in temporary files.
                conn.execute(text("SET LOCAL jit = off; SET LOCAL work_mem = '64MB'"
                                  + ("" if parallel else "; SET LOCAL max_parallel_workers_per_gather = 0")))
            return fn(conn, *args)

    def cycle(self, f: Filters) -> CycleOut:
        return self.run(cycle, f)

    def stages(self, f: Filters) -> StagesOut:
        return self.run(stages, f)

    def receivables(self, f: Filters) -> ReceivablesOut:
        return self.run(receivables, f)

    def costs(self, f: Filters) -> CostsOut:
        return self.run(costs, f)

    def satisfaction(self, f: Filters) -> SatisfactionOut:
        return self.run(satisfaction, f)

    def bottlenecks(self, f: Filters) -> BottlenecksOut:
        return self.run(bottlenecks, f)

    def quarterly(self, f: Filters, quarter: str) -> QuarterlyReportOut:
        cur_f, prev_f = quarter_filters(f, quarter, self.tz)
        key = None
        if self.cache_reports and cur_f.end is not None and cur_f.end <= f.now:  # a closed quarter
            key = (quarter, f.customer, f.owner, f.department, f.playbook, self.run(change_marker))
            with self._lock:
                hit = self._reports.get(key)
            if hit is not None and monotonic() - hit[0] < self.REPORT_TTL_SECONDS:
                return hit[1]
        with ThreadPoolExecutor(2) as pool:
            # Two connections keep two cores busy: parallel query workers on top of them only add
            # start-up and contention (measured: a third more wall time).
            mc, mp = pool.map(lambda x: self.run(quarter_metrics, x, parallel=False), (cur_f, prev_f))
        report = assemble_report(mc, mp)
        if key is not None:
            with self._lock:
                self._reports[key] = (monotonic(), report)
                while len(self._reports) > self.REPORT_CACHE:
                    self._reports.pop(next(iter(self._reports)))
        return report
