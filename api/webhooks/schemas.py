"""Request and response bodies of ``/webhooks`` (docs/webhooks.md).  Field names are public."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from api.platform.fields import not_nullable
from core.webhooks.events import EVENT_TYPES, FAMILIES, pattern_problem

DeliveryStatus = Literal["pending", "delivered", "failed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _check_url(value: str) -> str:
    value = value.strip()
    if any(c.isspace() for c in value):
        raise ValueError("the URL must not contain spaces")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("the URL must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("the URL needs a host")
    if parts.username or parts.password:
        raise ValueError("put no credentials in the URL; requests are signed with the secret")
    if parts.fragment:
        raise ValueError("the URL must not have a #fragment")
    del port
    return value


def _check_types(value: list[str]) -> list[str]:
    problems = [p for p in (pattern_problem(t) for t in value) if p]
    if problems:
        raise ValueError("; ".join(problems))
    if len(set(value)) != len(value):
        raise ValueError("event types are listed more than once")
    return value


_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
# What _check_url accepts, as a pattern the OpenAPI document can state: http(s), a host (DNS labels), an optional
# port, then an optional path and query of visible ASCII; no credentials, no #fragment, no spaces.
_LABEL = r"[A-Za-z0-9_~-]{1,63}"  # DNS: labels of 1 to 63 characters
URL_PATTERN = r"^[Hh][Tt][Tt][Pp]([Ss])?://" + _LABEL + r"(\." + _LABEL + r")*\.?(:" + _PORT + r')?([/?][!-"$-~]*)?$'
URL_FIELD = Field(min_length=1, max_length=2000, pattern=URL_PATTERN, description="http(s) endpoint receiving the POSTs")
# The filters a subscription may use: exact types, "<family>.*", "*" (checked by _check_types).
EventTypePattern = Annotated[
    str, WithJsonSchema({"type": "string", "enum": ["*", *(f"{f}.*" for f in FAMILIES), *EVENT_TYPES]})
]
SECRET_DESCRIPTION = (
    "HMAC-SHA256 signing key (16 to 200 characters).  Leave it out to have one generated; either way it is "
    "returned once, in the answer to this request, and never again."
)
TYPES_DESCRIPTION = (
    'Event types to receive: exact types (GET /webhooks/event-types), a family ("milestone.*") or "*" for all.'
)


class WebhookCreate(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"url": "https://crm.example.com/hooks/contracts",
                                                               "event_types": ["milestone.*", "payment.received"]}]})

    url: str = URL_FIELD
    secret: str | None = Field(default=None, min_length=16, max_length=200, description=SECRET_DESCRIPTION)
    event_types: list[EventTypePattern] = Field(
        default_factory=lambda: ["*"], min_length=1, max_length=50, description=TYPES_DESCRIPTION,
        json_schema_extra={"uniqueItems": True},
    )
    description: str = Field(default="", max_length=300)
    active: bool = True
    replay_from_start: bool = Field(
        default=False,
        description="Deliver every event already in the log too (default: only events from now on).",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)

    @field_validator("event_types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        return _check_types(v)


class WebhookPatch(_Strict):
    """Only the fields present change.  ``active: false`` pauses (events wait, nothing is lost);
    a new ``url`` or ``secret`` also makes a pending retry go out at once."""

    model_config = ConfigDict(json_schema_extra=not_nullable("url", "secret", "event_types", "description", "active"))

    url: str | None = Field(default=None, min_length=1, max_length=2000, pattern=URL_PATTERN)
    secret: str | None = Field(default=None, min_length=16, max_length=200, description="Rotate the signing key")
    event_types: list[EventTypePattern] | None = Field(
        default=None, min_length=1, max_length=50, description=TYPES_DESCRIPTION, json_schema_extra={"uniqueItems": True}
    )
    description: str | None = Field(default=None, max_length=300)
    active: bool | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)

    @field_validator("event_types")
    @classmethod
    def _types(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_types(v)

    @model_validator(mode="after")
    def _no_nulls(self) -> WebhookPatch:
        nulls = sorted(f for f in self.model_fields_set if getattr(self, f) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null")
        return self


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    event_types: list[str]
    description: str
    active: bool
    created_at: datetime
    updated_at: datetime
    cursor: int = Field(description="Last event-log position handled (delivered, failed or filtered out)")
    next_attempt_at: datetime | None = Field(description="When the event at the head is retried, if it is waiting")
    consecutive_failures: int = Field(description="Events recorded failed in a row (0 after a delivery)")
    last_delivered_at: datetime | None
    last_failed_at: datetime | None
    last_error: str | None


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret.  Shown in this answer only: keep it.")


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    event_id: str = Field(description='The CloudEvents id, "<contract_id>:<seq>"')
    event_type: str
    contract_id: str
    seq: int
    status: DeliveryStatus
    attempts: int
    response_status: int | None
    error: str | None
    first_attempt_at: datetime
    last_attempt_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    total: int
    limit: int
    offset: int


class EventTypeOut(BaseModel):
    type: str
    description: str


class PingOut(BaseModel):
    event_id: str
    delivered: bool
    status_code: int | None = Field(description="The receiver's HTTP status, if it answered")
    error: str | None
