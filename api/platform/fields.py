"""Field types and limits shared by the request bodies of every domain (README "Limits").

Money travels as decimal strings ("1234.50"); datetimes as ISO 8601 with a zone.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Annotated

from babel.numbers import list_currencies
from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue
from pydantic import Strict as StrictMode

# A plain decimal string: ASCII digits and at most one '.', an optional leading '-' (refused as
# "not greater than zero" with the amount in the message); no exponent ("1e3"), spaces, '+',
# full-width digits ("１２"), bare points ("5.", ".5") or leading zeros ("00005").  Python's
# Decimal reads all of those, and a finance feed that sends them is sending something else (a
# float printed, a typing slip): refused at the edge, before the workflow sees it.  The currency's
# decimals and the range are checked by the service layer (core.money).
_PLAIN_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?", re.ASCII)


def not_plain_decimal(value: str) -> str | None:
    """Why ``value`` is not a plain decimal amount; None if it is one."""
    if _PLAIN_DECIMAL.fullmatch(value):
        return None
    return (f"{value!r} is not a decimal amount such as '1234.50' (plain digits with one optional '.': no exponent, "
            f"sign, spaces or leading zeros)")


def _plain_decimal(value: str) -> str:
    why = not_plain_decimal(value)
    if why is not None:
        raise ValueError(why)
    return value


# The document states the shape (clients and schemathesis see it); the validator says what is wrong.
Amount = Annotated[str, Field(max_length=40, examples=["1234.50"],
                              json_schema_extra={"pattern": f"^{_PLAIN_DECIMAL.pattern}$"}),
                   AfterValidator(_plain_decimal)]
# A bank statement line's amount: judged per line (a malformed one rejects its line, not the statement).
LineAmount = Annotated[str, Field(max_length=40, examples=["1234.50"])]
# Largest integer a query or path parameter may carry: the databases' INTEGER (beyond it: 422, not a
# driver overflow).
MAX_INT = 2_147_483_647
# ISO 4217 codes the service knows (core.money checks against the same list, with its own message).
CURRENCIES = sorted(list_currencies())
# The same, as the JSON Schema ``enum`` of a currency field.
CURRENCY_ENUM: dict[str, JsonValue] = {"enum": list[JsonValue](CURRENCIES)}


# ---------------------------------------------------------------- limits (README "Limits")
# Dates: years 1970 to 2200.  Outside them a date is a typing mistake, and what the service does
# with a date (time zones, adding durations of up to a century: core/durations.MAX_DURATION)
# would leave the range Python's datetime holds (years 1 to 9999): a 500, never a useful answer.
MIN_YEAR, MAX_YEAR = 1970, 2200
SUPPORTED_DATES = f"years {MIN_YEAR} to {MAX_YEAR}"
# Free text: what a person writes in one field.
NAME_MAX = 200  # names of people, customers, milestones
TEXT_MAX = 2000  # notes, messages, reasons
STANDARD_MAX = 4000  # a milestone's execution standard / checklist
DURATION_MAX_CHARS = 40  # an ISO 8601 duration's text (its length is capped by core/durations)
KEY_MAX = 60  # milestone and installment keys
# Lists: how many items one request may carry.
MILESTONES_MAX = 200
INSTALLMENTS_MAX = 120
DEPENDS_ON_MAX = 50
REMINDERS_MAX = 10
ESCALATION_LEVELS_MAX = 10
APPROVER_ROLES_MAX = 10
# Milestones (or installments) one contract holds once built, a playbook's repeating steps included.
CONTRACT_ITEMS_MAX = 500


def in_supported_years(value):
    """A date or date-time within MIN_YEAR..MAX_YEAR (see above)."""
    if value is not None and not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"{value.isoformat()} is outside the supported dates ({SUPPORTED_DATES})")
    return value


class Strict(BaseModel):
    # strict: JSON types as declared in the OpenAPI document -- 0/1 are not booleans, "5" is not an
    # integer, a number is not a string (date-times and integers: see DateTimeIn, IntIn).  Unknown
    # fields are refused.
    model_config = ConfigDict(extra="forbid", strict=True)


_DATETIME_TEXT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")


def _datetime_text(value: object) -> object:
    """A date-time travels as text (RFC 3339); a number is not one (pydantic would read a Unix time)."""
    if isinstance(value, datetime) or (isinstance(value, str) and _DATETIME_TEXT.match(value)):
        return value
    raise ValueError("expected a date-time with a zone, e.g. 2026-11-27T10:00:00+08:00")


# A request date-time: RFC 3339 text with a zone, within the supported years.
DateTimeIn = Annotated[AwareDatetime, StrictMode(False), BeforeValidator(_datetime_text),
                       AfterValidator(in_supported_years)]
# The same without the years: where a batch judges each line's date on its own (finance statements).
AnyDateTimeIn = Annotated[AwareDatetime, StrictMode(False), BeforeValidator(_datetime_text)]

# Money cannot have been received in the future; a day's grace covers zones and skewed clocks.
RECEIVED_GRACE = timedelta(days=1)


def received_too_late(at: datetime) -> str | None:
    """Why a payment's ``received_at`` cannot be true (it lies ahead), or None."""
    if at > datetime.now(timezone.utc) + RECEIVED_GRACE:
        return f"received_at {at.isoformat()} is in the future: money is recorded once it has been received"
    return None


_DATE_TEXT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _date_text(value: object) -> object:
    """A date travels as YYYY-MM-DD; "0" is not one (pydantic would read a Unix time)."""
    if isinstance(value, date) or (isinstance(value, str) and _DATE_TEXT.match(value)):
        return value
    raise ValueError("expected a date such as 2026-11-27")


# A request (or query) date: RFC 3339 full-date.
DateIn = Annotated[date, StrictMode(False), BeforeValidator(_date_text), AfterValidator(in_supported_years)]
# An ISO 8601 duration's text; what it says is checked by the service layer (core/durations.check_duration).
DurationText = Annotated[str, Field(max_length=DURATION_MAX_CHARS)]
MilestoneKey = Annotated[str, Field(min_length=1, max_length=KEY_MAX)]
RoleName = Annotated[str, Field(min_length=1, max_length=40)]


def _json_integer(value: object) -> object:
    """A JSON integer: 5, or 5.0 (JSON Schema counts it as an integer); not "5", not true."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected an integer")
    return value


# A request integer, as JSON Schema reads "integer" (2.0 is one, 2.5 and "2" are not).
IntIn = Annotated[int, StrictMode(False), BeforeValidator(_json_integer)]


def not_nullable(*fields: str):
    """json_schema_extra for PATCH bodies: these fields may be left out but not set to null (the
    service refuses null with a 422), so the document must not offer null for them."""

    def extra(schema: dict, _model: type) -> None:
        for name in fields:
            prop = schema["properties"][name]
            variants = [v for v in prop.pop("anyOf", []) if v.get("type") != "null"]
            if len(variants) == 1:
                prop.update(variants[0])
            elif variants:
                prop["anyOf"] = variants
            prop.pop("default", None)

    return extra
