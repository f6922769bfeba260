"""Dependencies injected into routes.  Everything comes from the app's lifespan; no module globals."""

from __future__ import annotations

from fastapi import Request

from api.service import ContractService
from core.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_contract_service(request: Request) -> ContractService:
    return request.app.state.contracts
