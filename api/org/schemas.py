"""Request and response bodies of people, departments, the task inbox and notifications."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.platform.fields import Strict, not_nullable

Locale = Literal["zh", "en"]
_ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
_EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class UserCreate(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "wu.lei", "name": "Wu Lei", "email": "wu.lei@example.com",
                                                         "department": "sales", "manager_id": "zhang.min"}]})

    id: str = Field(min_length=1, max_length=100, pattern=_ID_PATTERN, description="The login, e.g. li.wei")
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320, pattern=_EMAIL_PATTERN)
    department: str | None = Field(default=None, min_length=1, max_length=60, pattern=_ID_PATTERN)
    manager_id: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=_ID_PATTERN, description="Escalations copy this manager"
    )
    locale: Locale = "zh"
    active: bool = True


class UserPatch(Strict):
    """Only the fields present change; department and manager_id may be set to null."""

    model_config = ConfigDict(json_schema_extra=not_nullable("name", "email", "locale", "active"))

    name: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, min_length=3, max_length=320, pattern=_EMAIL_PATTERN)
    department: str | None = Field(default=None, min_length=1, max_length=60, pattern=_ID_PATTERN)
    manager_id: str | None = Field(default=None, min_length=1, max_length=100, pattern=_ID_PATTERN)
    locale: Locale | None = None
    active: bool | None = None


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    email: str
    department: str | None
    manager_id: str | None
    locale: str
    active: bool
    created_at: datetime


class DepartmentPut(Strict):
    name: str = Field(min_length=1, max_length=200)
    head_id: str | None = Field(default=None, max_length=100)
    default_assignee_id: str | None = Field(default=None, max_length=100, description="Takes the department's hand-offs")
    webhook_url: str | None = Field(default=None, max_length=500, pattern=r"^https?://", description="Chat-bot webhook")
    webhook_secret: str | None = Field(
        default=None, max_length=200,
        description="Signing secret; write-only. On PUT, leaving it out keeps the stored one, null clears it.",
    )


class DepartmentCreate(DepartmentPut):
    key: str = Field(min_length=1, max_length=60, pattern=_ID_PATTERN, description="e.g. finance, as on milestones")


class DepartmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str
    name: str
    head_id: str | None
    default_assignee_id: str | None
    webhook_url: str | None
    webhook_secret_set: bool = Field(description="Whether a webhook secret is stored (the secret is never returned)")


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    key: str
    contract_id: str
    milestone_key: str | None
    assignee: str
    title: str
    body: str
    status: Literal["open", "acked", "done"]
    created_at: datetime
    acked_at: datetime | None
    acked_by: str | None


class TaskAck(Strict):
    by: str | None = Field(default=None, min_length=1, max_length=100,
                           description="Who acts: yourself (default); admins and machines may name a person")


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    key: str
    contract_id: str
    item_type: str
    item_key: str
    level: int
    kind: str
    recipient: str
    role: str
    channel: str
    subject: str
    body: str
    status: Literal["decided", "sent", "failed"]
    error: str | None
    created_at: datetime
    sent_at: datetime | None
    attempts: int
