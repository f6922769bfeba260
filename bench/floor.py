"""The bare-Temporal floor: the least a Temporal application can do for each measured operation.

Each benchmark runs these on their own worker and task queue, on the same dev server as the
project and in the same run, and divides the project's figure by the floor's:

* ``TrivialWorkflow``  -- returns at once: the floor of ``POST /contracts`` is a bare
  ``start_workflow`` of it (and, for reference, ``execute_workflow``: started *and* completed
  by the worker);
* ``LedgerWorkflow``   -- stays open (with a timer far ahead, like a contract's next due date)
  and answers a bare update ``pay(amount) -> balance``: the floor of ``POST .../payments``, and
  the open workflow of the scale floor;
* ``AlarmWorkflow``    -- sleeps until an instant, then one activity sends one email over SMTP
  (stdlib smtplib, one connection per message like the project's channel): the floor of a
  reminder.

Workflows run in the default sandbox, as the project's do.  Run a floor worker as its own process
(for the scale benchmark, so its memory is measured alone)::

    python -m bench.floor --address 127.0.0.1:7233 --task-queue floor
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow

# Kept small on purpose: the workflow sandbox re-executes this module for every new workflow
# instance (as it does workflows/contract.py), so the worker and CLI imports live in functions.


@dataclass
class LedgerInput:
    opening: int = 0
    sleep_days: int = 365  # an open timer, as an open contract has


@dataclass
class AlarmInput:
    at: float  # epoch seconds (plain types only: this module is re-imported inside the sandbox)
    key: str
    smtp_host: str
    smtp_port: int


@workflow.defn
class TrivialWorkflow:
    @workflow.run
    async def run(self) -> None:
        return None


@workflow.defn
class LedgerWorkflow:
    def __init__(self) -> None:
        self.balance = 0
        self.closed = False

    @workflow.run
    async def run(self, input: LedgerInput) -> int:
        self.balance = input.opening
        with contextlib.suppress(TimeoutError):  # the ledger's far timer: it is closed before
            await workflow.wait_condition(lambda: self.closed, timeout=timedelta(days=input.sleep_days))
        return self.balance

    @workflow.update
    def pay(self, amount: int) -> int:
        self.balance -= amount
        return self.balance

    @workflow.query
    def balance_query(self) -> int:
        return self.balance

    @workflow.signal
    def close(self) -> None:
        self.closed = True


@workflow.defn
class AlarmWorkflow:
    @workflow.run
    async def run(self, a: AlarmInput) -> None:
        delay = a.at - workflow.now().timestamp()
        if delay > 0:
            await workflow.sleep(delay)
        await workflow.execute_activity(send_alarm, a, start_to_close_timeout=timedelta(seconds=25))


@activity.defn
def send_alarm(a: AlarmInput) -> None:
    import smtplib

    body = (
        f"From: floor@localhost\r\nTo: owner@example.com\r\nSubject: alarm {a.key}\r\n"
        f"Message-ID: <{a.key}@floor>\r\nX-Bench-Key: {a.key}\r\n\r\nDue.\r\n"
    )
    with smtplib.SMTP(a.smtp_host, a.smtp_port, timeout=10) as smtp:
        smtp.sendmail("floor@localhost", ["owner@example.com"], body.encode())


def floor_worker(client, task_queue: str, *, max_cached_workflows: int = 2000, max_concurrent_activities: int = 50):
    """Tuned like the project's worker (worker.py): same cache bound, activity slots and pollers."""
    from concurrent.futures import ThreadPoolExecutor

    from temporalio.worker import PollerBehaviorAutoscaling, Worker

    return Worker(
        client,
        task_queue=task_queue,
        workflows=[TrivialWorkflow, LedgerWorkflow, AlarmWorkflow],
        activities=[send_alarm],
        activity_executor=ThreadPoolExecutor(max_workers=max_concurrent_activities),
        max_concurrent_activities=max_concurrent_activities,
        max_cached_workflows=max_cached_workflows,
        workflow_task_poller_behavior=PollerBehaviorAutoscaling(),
        activity_task_poller_behavior=PollerBehaviorAutoscaling(),
    )


async def _serve(address: str, task_queue: str, max_cached_workflows: int) -> None:
    import signal

    from temporalio.client import Client

    client = await Client.connect(address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with floor_worker(client, task_queue, max_cached_workflows=max_cached_workflows):
        print(f"floor worker polling {task_queue} on {address}", flush=True)
        await stop.wait()


def main() -> None:
    import argparse
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Run a floor worker as its own process.")
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--max-cached-workflows", type=int, default=2000)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from core.temporal import hard_exit

    asyncio.run(_serve(args.address, args.task_queue, args.max_cached_workflows))
    hard_exit(0)


if __name__ == "__main__":
    main()
