"""Incoming integrations: finance bank-statement batches and ERP delivery-progress batches.

See docs/integrations.md.  A batch answers 200 with one result per line; only an invalid
envelope (422) or an oversized batch (413) fails as a whole, and then nothing is applied.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from api.auth.policy import principal_of
from api.integrations import schemas as s
from api.integrations.service import IntegrationService
from api.platform.problems import PROBLEM_RESPONSE, Responses

router = APIRouter(prefix="/integrations", tags=["integrations"])

_problem = PROBLEM_RESPONSE
ERRORS: Responses = {413: _problem, 422: _problem}


async def get_integration_service(request: Request) -> IntegrationService:
    # One per app, so the concurrency bound holds across simultaneous batches too.
    service = getattr(request.app.state, "integrations", None)
    if service is None:
        service = IntegrationService(request.app.state.contracts)
        request.app.state.integrations = service
    return service


Service = Annotated[IntegrationService, Depends(get_integration_service)]


@router.post("/finance/payments", response_model=s.FinancePaymentsOut, responses=ERRORS)
async def finance_payments(body: s.FinancePaymentsIn, service: Service, request: Request):
    """A bank statement (or any batch of received payments), each line matched to its contract.

    Matching: ``contract_id``; else ``contract_number`` (the contract's ``external_id``); else a
    contract number or contract id found as a token in ``reference``.  Each line is recorded as the
    payment reference ``bank:<line_id>``: posting a line again answers ``duplicate``.
    """
    return await service.finance_payments(body, principal_of(request).id)


@router.post("/erp/progress", response_model=s.ErpProgressOut, responses=ERRORS)
async def erp_progress(body: s.ErpProgressIn, service: Service, request: Request):
    """Delivery progress from the ERP, matched on the contract's ``erp_order_no``.

    ``complete: true`` completes the milestone (by ``erp``).  A report equal to the one already
    recorded, or a completion of a milestone already done, answers ``duplicate``.
    """
    return await service.erp_progress(body, principal_of(request).id)
