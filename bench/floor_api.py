"""The HTTP floor: the least a FastAPI front door can do for a payment.

One route, served by uvicorn with the same event loop and parser as the API (uvloop, httptools):
it checks the caller's key (a constant-time comparison, no database), validates the same JSON
body as ``POST /contracts/{id}/payments`` with pydantic, sends the floor's bare update
(``LedgerWorkflow.pay``) and answers the balance.  No row lookup, no read-model write, no audit
entry, no middlewares.  ``bench.payment --split`` measures it beside the bare gRPC update and the
project: the project against it is what the service's own work costs behind any HTTP front door.

    uvicorn --factory bench.floor_api:create_app   # FLOOR_TEMPORAL_ADDRESS, FLOOR_API_KEY
"""

from __future__ import annotations

import base64
import hmac
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field
from temporalio.client import Client

from bench.floor import LedgerWorkflow


class PayIn(BaseModel):
    """The same fields and rules of shape as the API's payment body."""

    reference: str = Field(min_length=1, max_length=120)
    amount: str = Field(max_length=40, pattern=r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")
    currency: str = Field(min_length=3, max_length=3)
    received_at: datetime


def create_app() -> FastAPI:
    address = os.environ["FLOOR_TEMPORAL_ADDRESS"]
    expected = "Basic " + base64.b64encode(f"apikey:{os.environ['FLOOR_API_KEY']}".encode()).decode()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = await Client.connect(address)
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/ledgers/{workflow_id}/pay")
    async def pay(workflow_id: str, body: PayIn, request: Request) -> dict[str, str | int]:
        if not hmac.compare_digest(request.headers.get("authorization", ""), expected):
            raise HTTPException(401, "unknown key")
        balance = await request.app.state.client.get_workflow_handle(workflow_id).execute_update(LedgerWorkflow.pay, 1)
        return {"reference": body.reference, "balance": balance}

    return app
