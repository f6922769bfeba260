"""One helper for the contract's background loops (working-day dates, supplementary agreements,
renewals): items handled one at a time, in the order they came, by an async handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from temporalio import workflow

T = TypeVar("T")


class WorkQueue(Generic[T]):
    """``items`` is a list the workflow owns (a state field survives continue-as-new with it); the
    head is removed once ``handle`` has dealt with it, success or recorded failure."""

    def __init__(self, items: list[T], handle: Callable[[T], Awaitable[None]]) -> None:
        self.items = items
        self._handle = handle
        self.busy = False

    def idle(self) -> bool:
        return not self.items and not self.busy

    async def run(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self.items))
            self.busy = True
            try:
                await self._handle(self.items[0])
            finally:
                self.busy = False
            self.items.pop(0)
