"""Request and response bodies of /auth and /api-keys."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.platform.fields import Strict

KeyRole = Literal["integration:finance", "integration:erp", "integration:crm", "admin"]


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime


class MeOut(BaseModel):
    id: str
    name: str
    kind: Literal["user", "service"]
    roles: list[str]
    department: str | None
    team: list[str] = Field(description="People whose contracts this caller oversees")


class PasswordIn(Strict):
    user_id: str | None = Field(default=None, max_length=100, description="Admins may set anyone's; default: yourself")
    current_password: str | None = Field(default=None, max_length=200, description="Required to change your own")
    new_password: str = Field(min_length=10, max_length=200)


class KeyCreate(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "erp", "roles": ["integration:erp"]}]})

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$", description="The service account")
    roles: list[KeyRole] = Field(min_length=1, max_length=4)


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    roles: list[str]
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The API key, shown only now: send it as 'Authorization: Bearer <key>'")
