"""Contract routes.  Paths and field names are the public contract; keep them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from api.auth.policy import can_see, contract_access, principal_of, require_owner_in_reach, stamp
from api.contracts import schemas
from api.contracts.service import ContractService, get_contract_service
from api.platform.fields import MAX_INT
from api.platform.problems import PROBLEM_RESPONSE, Problem, Responses

router = APIRouter(prefix="/contracts", tags=["contracts"])
Service = Annotated[ContractService, Depends(get_contract_service)]
ContractId = Annotated[str, Path(min_length=1, max_length=40, description="Contract id")]
MilestoneKey = Annotated[str, Path(min_length=1, max_length=60)]

_problem = PROBLEM_RESPONSE
ERRORS: Responses = {404: _problem, 409: _problem, 422: _problem, 503: _problem}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.ContractCreated,
    responses={200: {"model": schemas.ContractCreated, "description": "Same external_id seen before"}, **ERRORS},
)
async def create_contract(body: schemas.ContractCreate, service: Service, response: Response, request: Request):
    """Register a signed contract and start its workflow (``contract-<id>``)."""
    principal = principal_of(request)
    require_owner_in_reach(principal, body.owner)
    created, is_new = await service.create(body)
    if not is_new:
        # The same external_id again answers the contract it made, but only to someone who may see
        # that contract: to anyone else its id would be a way round "a contract you cannot see is 404".
        access = await run_in_threadpool(_access, service, created.id)
        if not can_see(principal, access):
            raise Problem(409, f"external_id {body.external_id!r} is already used by a contract you cannot see",
                          slug="external-id-taken")
        response.status_code = status.HTTP_200_OK
    return created


def _access(service: ContractService, contract_id: str):
    with service.sessions() as session:
        return contract_access(session, contract_id)


@router.get("", response_model=schemas.ContractPage)
def list_contracts(
    request: Request,
    service: Service,
    status_: Annotated[
        Literal["active", "completed", "terminated", "expired"] | None, Query(alias="status")
    ] = None,
    owner: Annotated[str | None, Query(max_length=100)] = None,
    customer: Annotated[str | None, Query(max_length=200, description="Name (substring) or CRM id")] = None,
    overdue: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
):
    """The contracts the caller may see (their own and their team's; all for finance, legal, admin)."""
    return service.list_contracts(status=status_, owner=owner, customer=customer, overdue=overdue, limit=limit, offset=offset,
                        viewer=principal_of(request))


@router.get("/{contract_id}", response_model=schemas.ContractOut, responses=ERRORS)
async def get_contract(contract_id: ContractId, service: Service):
    """The contract's live state, read from its workflow."""
    return await service.get(contract_id)


@router.get("/{contract_id}/events", response_model=list[schemas.EventOut], responses=ERRORS)
def contract_events(
    contract_id: ContractId,
    service: Service,
    after_seq: Annotated[int, Query(ge=0, le=MAX_INT, description="Start after the workflow event of this number")] = 0,
    after: Annotated[str | None, Query(max_length=80, description=(
        "Start after this event_id (from an earlier answer): pages exactly, reminders (which have no seq) "
        "included; takes precedence over after_seq"))] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
):
    """The append-only event log, oldest first."""
    return service.events(contract_id, after_seq=after_seq, limit=limit, after=after)


@router.post("/{contract_id}/payments", response_model=schemas.PaymentApplied, responses=ERRORS)
async def record_payment(contract_id: ContractId, body: schemas.PaymentIn, service: Service, request: Request):
    """Record money received.  Idempotent on ``reference``: a repeat answers ``applied: false``."""
    return await service.record_payment(contract_id, stamp(request, body))


@router.post("/{contract_id}/milestones/{key}/complete", response_model=schemas.OperationOut, responses=ERRORS)
async def complete_milestone(contract_id: ContractId, key: MilestoneKey, body: schemas.CompleteIn, service: Service,
                             request: Request):
    return await service.complete_milestone(contract_id, key, stamp(request, body))


@router.post("/{contract_id}/milestones/{key}/progress", response_model=schemas.OperationOut, responses=ERRORS)
async def report_progress(contract_id: ContractId, key: MilestoneKey, body: schemas.ProgressIn, service: Service,
                          request: Request):
    return await service.report_progress(contract_id, key, stamp(request, body, "source"))


@router.post("/{contract_id}/milestones/{key}/waive", response_model=schemas.OperationOut, responses=ERRORS)
async def waive_milestone(contract_id: ContractId, key: MilestoneKey, body: schemas.WaiveIn, service: Service,
                          request: Request):
    return await service.waive_milestone(contract_id, key, stamp(request, body))


@router.post("/{contract_id}/terminate", response_model=schemas.OperationOut, responses=ERRORS)
async def terminate_contract(contract_id: ContractId, body: schemas.TerminateIn, service: Service, request: Request):
    return await service.terminate(contract_id, stamp(request, body))
