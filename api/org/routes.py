"""People and departments: who owns what, who their manager is, where messages go.

Thin: each route opens one transaction on the app's sessions and calls ``core.org``, whose
errors (NotFound, Conflict, Invalid) become 404, 409 and 422 problem details.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, status

from api.org import schemas
from api.org.service import Store
from api.platform.problems import PROBLEM_RESPONSE, Responses
from api.webhooks.targets import require_public_target
from core import org
from models import Department

_problem = PROBLEM_RESPONSE
ERRORS: Responses = {404: _problem, 409: _problem, 422: _problem}
UserIdPath = Annotated[str, Path(min_length=1, max_length=100, description="User id (login)")]
DepartmentKeyPath = Annotated[str, Path(min_length=1, max_length=60, description="Department key")]

router = APIRouter(tags=["organisation"])


# ---------------------------------------------------------------------- users
@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=schemas.UserOut, responses=ERRORS)
def create_user(body: schemas.UserCreate, store: Store):
    """Add a person.  409 if the id is taken; 422 if the department or manager is unknown."""
    with store.transaction() as session:
        return org.create_user(session, **body.model_dump())


@router.get("/users", response_model=list[schemas.UserOut])
def list_users(store: Store, department: str | None = None, active: bool | None = None):
    with store.transaction() as session:
        return org.list_users(session, department=department, active=active)


@router.get("/users/{user_id}", response_model=schemas.UserOut, responses=ERRORS)
def get_user(user_id: UserIdPath, store: Store):
    with store.transaction() as session:
        return org.get_user(session, user_id)


@router.patch("/users/{user_id}", response_model=schemas.UserOut, responses=ERRORS)
def update_user(user_id: UserIdPath, body: schemas.UserPatch, store: Store):
    """Change the fields given.  422 if the department or manager is unknown, or if the new
    manager reports (directly or not) to this user."""
    with store.transaction() as session:
        return org.update_user(session, user_id, **body.model_dump(exclude_unset=True))


# ---------------------------------------------------------------------- departments
def department_out(dept: Department) -> schemas.DepartmentOut:
    return schemas.DepartmentOut(
        key=dept.key,
        name=dept.name,
        head_id=dept.head_id,
        default_assignee_id=dept.default_assignee_id,
        webhook_url=dept.webhook_url,
        webhook_secret_set=bool(dept.webhook_secret),
    )


@router.post(
    "/departments", status_code=status.HTTP_201_CREATED, response_model=schemas.DepartmentOut, responses=ERRORS
)
def create_department(body: schemas.DepartmentCreate, store: Store, request: Request):
    """Add a department.  409 if the key is taken; 422 if the head or default assignee is unknown,
    or the webhook URL does not reach a public address."""
    require_public_target(body.webhook_url, request.app.state.settings, "webhook_url")
    with store.transaction() as session:
        return department_out(org.create_department(session, **body.model_dump()))


@router.get("/departments", response_model=list[schemas.DepartmentOut])
def list_departments(store: Store):
    with store.transaction() as session:
        return [department_out(d) for d in org.list_departments(session)]


@router.get("/departments/{key}", response_model=schemas.DepartmentOut, responses=ERRORS)
def get_department(key: DepartmentKeyPath, store: Store):
    with store.transaction() as session:
        return department_out(org.get_department(session, key))


@router.put("/departments/{key}", response_model=schemas.DepartmentOut, responses=ERRORS)
def replace_department(key: DepartmentKeyPath, body: schemas.DepartmentPut, store: Store, request: Request):
    """Replace an existing department (404 if unknown).  The webhook secret is write-only:
    leaving it out keeps the stored one, null clears it."""
    require_public_target(body.webhook_url, request.app.state.settings, "webhook_url")
    fields = body.model_dump(exclude={"webhook_secret"})
    if "webhook_secret" in body.model_fields_set:
        fields["webhook_secret"] = body.webhook_secret
    with store.transaction() as session:
        return department_out(org.replace_department(session, key, **fields))
