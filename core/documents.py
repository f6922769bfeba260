"""Rendering contract documents from ``templates/documents`` (Jinja2, autoescaped HTML)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from workflows.types import AgreementRequest, ClauseChange

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates" / "documents"
DISPLAY_TZ = ZoneInfo("Asia/Shanghai")


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def format_date(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(DISPLAY_TZ).strftime("%Y-%m-%d")


def format_moment(value: datetime | None) -> str:
    """A moment as a reader writes it, in Beijing time: ``2026-12-07 14:05``."""
    if value is None:
        return "—"
    return value.astimezone(DISPLAY_TZ).strftime("%Y-%m-%d %H:%M")


def format_last_day(end_at: datetime | str | None) -> str:
    """The last day a term covers.  Its end is an instant that is not part of it (``end_date``
    2027-11-26 ends at 2027-11-27 00:00 Beijing time): shown as its date, the term read a day long."""
    if end_at is None:
        return "—"
    if isinstance(end_at, str):
        end_at = datetime.fromisoformat(end_at)
    return format_date(end_at - timedelta(microseconds=1))


def format_value(clause: ClauseChange, value: str | None, currency: str) -> str:
    """A clause's old or new value as a reader expects it: dates in Beijing time (the term's end
    as its last day), money with separators."""
    if value is None:
        return "—"
    if clause.clause == "end_at":
        try:
            return format_last_day(value)
        except ValueError:
            return value
    if clause.kind == "date":
        try:
            return format_date(value)
        except ValueError:
            return value  # an offset such as "P30D"
    if clause.kind == "money":
        return f"{Decimal(value):,} {currency}"
    return value


def render_agreement(r: AgreementRequest) -> str:
    template = _environment().get_template("supplementary_agreement.html.j2")
    return template.render(
        r=r,
        clauses=[
            {"label": c.label, "old": format_value(c, c.old, r.currency), "new": format_value(c, c.new, r.currency)}
            for c in r.clauses
        ],
        approvals=[{"role": a.role, "by": a.by, "when": format_moment(a.at), "comment": a.comment}
                   for a in r.approvals],
        effective=format_date(r.effective_at),
        original=format_date(r.original_effective_at),
    )
