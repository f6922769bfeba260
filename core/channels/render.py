"""Render a notification (subject, plain text, HTML) from ``templates/notifications``.

Templates are ``{kind}.{locale}.subject.txt``, ``{kind}.{locale}.txt`` and ``{kind}.{locale}.html``
(the HTML ones extend ``_layout.html``).  HTML is autoescaped, text is not; every template runs
under ``StrictUndefined``, so a missing context field is an error, never a blank in an email.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates" / "notifications"
KINDS = ("reminder", "escalation", "handoff", "approval", "amended")
LOCALES = ("zh", "en")
DEFAULT_LOCALE = "en"
DISPLAY_TZ = ZoneInfo("Asia/Shanghai")

_ITEM_TYPE_LABELS = {
    "zh": {"milestone": "里程碑", "installment": "回款节点", "approval": "变更审批", "contract": "合同期限"},
    "en": {"milestone": "milestone", "installment": "installment", "approval": "approval", "contract": "contract term"},
}
# Optional context fields and their defaults; everything else the templates use is required.
_OPTIONAL = {"amount": None, "currency": None, "cc": (), "previous_item_name": None}


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    subject: str
    text: str
    html: str


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def normalize_locale(locale: str | None) -> str:
    """``zh``, ``zh-CN``, ``zh_Hans_CN`` -> ``zh``; ``en-US`` -> ``en``; anything else -> ``en``."""
    lang = (locale or "").replace("_", "-").split("-", 1)[0].strip().lower()
    return lang if lang in LOCALES else DEFAULT_LOCALE


def format_due(value: datetime | str) -> str:
    """A tz-aware instant as ``YYYY-MM-DD HH:MM`` in Asia/Shanghai."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise TypeError(f"due_at must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("due_at must be timezone-aware")
    return value.astimezone(DISPLAY_TZ).strftime("%Y-%m-%d %H:%M")


def format_amount(amount: Any, currency: str | None) -> str | None:
    """``"400000.00", "CNY"`` -> ``"400,000.00 CNY"``; ``None`` when there is no amount."""
    if amount is None or amount == "":
        return None
    if isinstance(amount, float):
        raise TypeError("amount must be a decimal string, not a float")
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation as exc:
        raise ValueError(f"amount {amount!r} is not a decimal string") from exc
    text = f"{value:,}"
    return f"{text} {currency}" if currency else text


def _check_link(link: Any) -> str:
    parts = urlsplit(str(link))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"link must be an absolute http(s) URL, got {link!r}")
    return str(link)


@lru_cache(maxsize=4)
def _template_names(env: Environment) -> frozenset[str]:
    """The templates there are, listed once per environment: listing walks the directory, and it
    was done for every message rendered (a new locale's files are found at the next start)."""
    return frozenset(env.list_templates())


def _template_locale(env: Environment, kind: str, locale: str) -> str:
    names = _template_names(env)
    if all(f"{kind}.{locale}.{part}" in names for part in ("subject.txt", "txt", "html")):
        return locale
    return DEFAULT_LOCALE


def render_notification(kind: str, locale: str, context: dict) -> RenderedMessage:
    """Render ``kind`` ("reminder", "escalation", "handoff") in ``locale`` ("zh"/"en", fallback en).

    ``context``: contract_id, contract_title, customer, item_type ("milestone"/"installment"),
    item_key, item_name, owner_name, due_at (tz-aware datetime or ISO string), days, level
    (escalation), link; optional amount (decimal string), currency, cc (list of names),
    previous_item_name (handoff: the milestone just completed).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}; expected one of {', '.join(KINDS)}")
    env = _environment()
    loc = _template_locale(env, kind, normalize_locale(locale))
    ctx = {**_OPTIONAL, **context}
    item_type = ctx.get("item_type")
    if item_type not in _ITEM_TYPE_LABELS[loc]:
        raise ValueError(f"item_type must be one of {', '.join(_ITEM_TYPE_LABELS[loc])}, got {item_type!r}")
    ctx["cc"] = [str(name) for name in (ctx["cc"] or ())]
    ctx["item_type_label"] = _ITEM_TYPE_LABELS[loc][item_type]
    ctx["due"] = format_due(ctx["due_at"]) if "due_at" in ctx else env.undefined(name="due_at")
    ctx["amount_text"] = format_amount(ctx["amount"], ctx["currency"])
    if "link" in ctx:
        ctx["link"] = _check_link(ctx["link"])
    ctx["locale"] = loc

    subject = env.get_template(f"{kind}.{loc}.subject.txt").render(ctx)
    text = env.get_template(f"{kind}.{loc}.txt").render(ctx)
    html = env.get_template(f"{kind}.{loc}.html").render(ctx)
    # A subject is one header line: fold any template whitespace (and never let a newline through).
    subject = " ".join(subject.split())
    return RenderedMessage(subject=subject, text=text.strip() + "\n", html=html)


__all__ = ["RenderedMessage", "render_notification", "format_due", "normalize_locale", "TEMPLATES_DIR"]
