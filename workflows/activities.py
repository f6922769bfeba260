"""The activities the contract workflows call, as typed stubs.

Workflow code calls these (``workflow.execute_activity(store_agreement, ...)``) so names, inputs
and results are checked by the type checker, without importing the implementations (SQLAlchemy,
SMTP, Jinja2) into the workflow sandbox.  The worker registers the real ones under the same
names (activities/*.py); tests/test_activity_stubs.py checks that every stub has its twin.
"""

from __future__ import annotations

from temporalio import activity

from workflows.types import (
    AgreementRequest,
    BusinessDueRequest,
    NotifyRequest,
    ProjectionDelta,
    RenewalRequest,
)


@activity.defn(name="project_delta")
def project_delta(delta: ProjectionDelta) -> int:
    """Writes the delta to the read model and the notification outbox (activities/projection.py);
    returns how many events were new."""
    raise NotImplementedError


@activity.defn(name="store_agreement")
def store_agreement(request: AgreementRequest) -> str:
    """Renders and stores a supplementary agreement; returns the document id (activities/documents.py)."""
    raise NotImplementedError


@activity.defn(name="start_renewal")
async def start_renewal(request: RenewalRequest) -> str:
    """Registers and starts the next term's contract; returns its workflow id (activities/renewal.py)."""
    raise NotImplementedError


@activity.defn(name="business_due")
def business_due(request: BusinessDueRequest) -> str:
    """``base + offset`` in working days, as ISO 8601 text (activities/calendar.py)."""
    raise NotImplementedError


@activity.defn(name="notify")
def notify(request: NotifyRequest) -> dict[str, int]:
    """Sends one notice to its recipients, exactly once each (activities/notify.py)."""
    raise NotImplementedError
