"""The worker: runs contract workflows and their activities on the task queue, and beside them the
notification outbox and the webhook dispatchers.

    python worker.py          # reads DATABASE_URL, TEMPORAL_ADDRESS, ... from the environment
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.orm import Session, configure_mappers, sessionmaker
from temporalio.client import Client
from temporalio.worker import Interceptor, PollerBehaviorAutoscaling, Worker
from temporalio.worker.workflow_sandbox import SandboxRestrictions

from activities.calendar import business_due_activity
from activities.documents import DocumentActivities
from activities.notify import NotifyActivities
from activities.projection import ProjectionActivities
from activities.renewal import RenewalActivities
from core.channels.email import close_idle_connections
from core.outbox import Clock, running_outbox, wall_clock
from core.settings import Settings, get_settings
from core.temporal import connect, hard_exit
from core.webhooks.dispatcher import running_dispatcher
from core.workflow_runner import LeanSandboxRunner
from models.db import make_engine, make_session_factory
from workflows.contract import ContractWorkflow
from workflows.escalation import EscalationWorkflow

WORKFLOWS = [ContractWorkflow, EscalationWorkflow]

# The workflow modules and the pure helpers they use are imported once per worker, not once per
# workflow instance: they keep no mutable module state.  Re-importing them for every new instance
# (and compiling them, without .pyc files) was half the worker's CPU while contracts were created,
# and a copy of the modules per cached workflow (docs/benchmarks.md, findings 1 and 5).
# The sandbox, with less of its own overhead per task: its glue code compiled once, and no entry
# into it just to ask which command a payload belongs to (core/workflow_runner.py).
WORKFLOW_RUNNER = LeanSandboxRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows", "core")
)


def build_worker(
    client: Client, settings: Settings, session_factory: sessionmaker[Session], *, task_queue: str | None = None,
    on_notices: Callable[[], None] | None = None, interceptors: Sequence[Interceptor] = (),
) -> Worker:
    # Configure the ORM now: activities run in threads that Temporal may interrupt (cancellation),
    # and an interruption during SQLAlchemy's lazy mapper set-up would break it for the process.
    configure_mappers()
    projection = ProjectionActivities(session_factory, on_notices)
    notify = NotifyActivities(session_factory, settings)
    documents = DocumentActivities(session_factory)
    renewals = RenewalActivities(client, session_factory)
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        workflow_runner=WORKFLOW_RUNNER,
        activities=[projection.project_delta, projection.project_contract, notify.notify, business_due_activity,
                    documents.store_agreement, renewals.start_renewal],
        activity_executor=ThreadPoolExecutor(max_workers=settings.max_concurrent_activities),
        max_concurrent_activities=settings.max_concurrent_activities,
        max_concurrent_local_activities=settings.max_concurrent_activities,
        # Bounded sticky cache: worker memory stays flat however many contracts are open.
        max_cached_workflows=settings.max_cached_workflows,
        # Bounded workflow-task intake: under a backlog the tasks wait on the server rather than in
        # this process, where they outlived their 10 s timeout and were replayed again and again
        # (docs/capacity.md, finding 2; seen as "workflow task duration exceeded" in the fault tests).
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
        # Pollers follow the load, so a burst of new contracts does not queue behind 5 pollers.
        workflow_task_poller_behavior=PollerBehaviorAutoscaling(),
        activity_task_poller_behavior=PollerBehaviorAutoscaling(),
        interceptors=interceptors,
    )


@contextlib.asynccontextmanager
async def running_worker(client: Client, settings: Settings, sessions: sessionmaker[Session], *,
                         task_queue: str | None = None, clock: Clock = wall_clock,
                         webhooks: bool = True, interceptors: Sequence[Interceptor] = ()) -> AsyncIterator[Worker]:
    """The worker with what runs beside it: the notification outbox's dispatcher (woken by the
    projection when it queues a notice due now) and, unless ``webhooks`` is off, the webhook one.
    ``clock`` is the outbox's idea of now (tests on the time-skipping server pass its clock)."""
    deliver = NotifyActivities(sessions, settings).deliver
    try:
        async with running_outbox(sessions, settings, deliver, clock) as outbox:
            worker = build_worker(client, settings, sessions, task_queue=task_queue,
                                  on_notices=outbox.wake if outbox is not None else None, interceptors=interceptors)
            async with worker, contextlib.AsyncExitStack() as stack:
                if webhooks:
                    await stack.enter_async_context(running_dispatcher(sessions, settings))
                yield worker
    finally:
        await asyncio.to_thread(close_idle_connections)  # the SMTP connections kept for reuse


async def run(settings: Settings) -> None:
    client = await connect(settings)
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logging.info("worker polling %s on %s", settings.task_queue, settings.temporal_address)
    async with running_worker(client, settings, sessions):
        await stop.wait()
    engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    event_loop_runner()(run(get_settings()))
    hard_exit(0)


def event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop where it is installed (as uvicorn does for the API), else asyncio's loop.  The
    worker's own loop carries every poll, activation hand-off and payload conversion: on uvloop a
    payment cost the worker 3.0-3.1 ms of CPU instead of 4.2, and payments at concurrency 16 ran
    0.50-0.54x the bare rate instead of 0.46-0.47x (docs/benchmarks.md, issue #12, fourth round).
    Workflow code runs on Temporal's own deterministic loop either way."""
    try:
        import uvloop
    except ImportError:  # Windows: uvloop is not installed there (pyproject.toml)
        return asyncio.run
    return uvloop.run



if __name__ == "__main__":
    main()
