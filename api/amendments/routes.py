"""Amendment and version routes, under /contracts/{id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, status

from api.amendments import schemas as s
from api.amendments.service import AmendmentService
from api.auth.policy import stamp
from api.platform.problems import PROBLEM_RESPONSE, Responses

router = APIRouter(prefix="/contracts/{contract_id}", tags=["amendments"])


async def get_amendment_service(request: Request) -> AmendmentService:
    return AmendmentService(request.app.state.contracts)


Service = Annotated[AmendmentService, Depends(get_amendment_service)]
ContractId = Annotated[str, Path(min_length=1, max_length=40)]
AmendmentId = Annotated[str, Path(min_length=1, max_length=40)]
_problem = PROBLEM_RESPONSE
ERRORS: Responses = {403: _problem, 404: _problem, 409: _problem, 422: _problem, 503: _problem}


@router.post("/amendments", status_code=status.HTTP_201_CREATED, response_model=s.AmendmentAccepted,
             responses=ERRORS)
async def request_amendment(contract_id: ContractId, body: s.AmendmentRequestIn, service: Service, request: Request):
    """Request a change in writing.  Answers with its impact and the roles that must approve."""
    return await service.request(contract_id, stamp(request, body, "requested_by"))


@router.get("/amendments", response_model=list[s.AmendmentOut], responses=ERRORS)
async def list_amendments(contract_id: ContractId, service: Service):
    return await service.list_amendments(contract_id)


@router.get("/amendments/{amendment_id}", response_model=s.AmendmentOut, responses=ERRORS)
async def get_amendment(contract_id: ContractId, amendment_id: AmendmentId, service: Service):
    return await service.get(contract_id, amendment_id)


@router.post("/amendments/{amendment_id}/approve", response_model=s.AmendmentAccepted, responses=ERRORS)
async def approve_amendment(contract_id: ContractId, amendment_id: AmendmentId, body: s.AmendmentDecisionIn,
                            service: Service, request: Request):
    """Approve for one role; the last required approval applies the amendment at once."""
    return await service.decide(contract_id, amendment_id, "approve", stamp(request, body))


@router.post("/amendments/{amendment_id}/reject", response_model=s.AmendmentAccepted, responses=ERRORS)
async def reject_amendment(contract_id: ContractId, amendment_id: AmendmentId, body: s.AmendmentDecisionIn,
                           service: Service, request: Request):
    return await service.decide(contract_id, amendment_id, "reject", stamp(request, body))


@router.post("/amendments/{amendment_id}/withdraw", response_model=s.AmendmentAccepted, responses=ERRORS)
async def withdraw_amendment(contract_id: ContractId, amendment_id: AmendmentId, body: s.WithdrawIn,
                             service: Service, request: Request):
    return await service.decide(contract_id, amendment_id, "withdraw", stamp(request, body))


@router.get("/versions", response_model=list[s.VersionOut], responses=ERRORS)
async def contract_versions(contract_id: ContractId, service: Service):
    """Version 1 as signed, then one version per applied amendment: what changed, who approved."""
    return await service.versions(contract_id)
