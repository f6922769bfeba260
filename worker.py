"""The worker: runs contract workflows and their activities on the task queue.

    python worker.py          # reads DATABASE_URL, TEMPORAL_ADDRESS, ... from the environment
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.orm import Session, configure_mappers, sessionmaker
from temporalio.client import Client
from temporalio.worker import PollerBehaviorAutoscaling, Worker

from activities.calendar import business_due_activity
from activities.documents import DocumentActivities
from activities.notify import NotifyActivities
from activities.projection import ProjectionActivities
from activities.renewal import RenewalActivities
from core.settings import Settings, get_settings
from core.temporal import connect, hard_exit
from core.webhooks.dispatcher import running_dispatcher
from models.db import make_engine, make_session_factory
from workflows.contract import ContractWorkflow
from workflows.escalation import EscalationWorkflow

WORKFLOWS = [ContractWorkflow, EscalationWorkflow]


def build_worker(
    client: Client, settings: Settings, session_factory: sessionmaker[Session], *, task_queue: str | None = None
) -> Worker:
    # Configure the ORM now: activities run in threads that Temporal may interrupt (cancellation),
    # and an interruption during SQLAlchemy's lazy mapper set-up would break it for the process.
    configure_mappers()
    projection = ProjectionActivities(session_factory)
    notify = NotifyActivities(session_factory, settings)
    documents = DocumentActivities(session_factory)
    renewals = RenewalActivities(client, session_factory)
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=[projection.project_contract, notify.notify, business_due_activity, documents.store_agreement,
                    renewals.start_renewal],
        activity_executor=ThreadPoolExecutor(max_workers=settings.max_concurrent_activities),
        max_concurrent_activities=settings.max_concurrent_activities,
        # Bounded sticky cache: worker memory stays flat however many contracts are open.
        max_cached_workflows=settings.max_cached_workflows,
        # Bounded workflow-task intake: under a backlog the tasks wait on the server rather than in
        # this process, where they outlived their 10 s timeout and were replayed again and again
        # (docs/capacity.md, finding 2; seen as "workflow task duration exceeded" in the fault tests).
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
        # Pollers follow the load, so a burst of new contracts does not queue behind 5 pollers.
        workflow_task_poller_behavior=PollerBehaviorAutoscaling(),
        activity_task_poller_behavior=PollerBehaviorAutoscaling(),
    )


async def run(settings: Settings) -> None:
    client = await connect(settings)
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    worker = build_worker(client, settings, sessions)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logging.info("worker polling %s on %s", settings.task_queue, settings.temporal_address)
    # Outgoing webhook subscriptions are dispatched from the event log alongside the worker.
    async with worker, running_dispatcher(sessions, settings):
        await stop.wait()
    engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    asyncio.run(run(get_settings()))
    hard_exit(0)


if __name__ == "__main__":
    main()
