"""The journal: how the contract's pure rules report what they did.

Rules change the state in place and tell the journal about the rest: the events they emit (the
contract's append-only log, numbered by ``state.version``), the items that fell due or were
resolved (their escalation starts or stops) and the notices to send at once.  The workflow
passes ``workflow.now`` as the clock; unit tests pass a fixed one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workflows.types import ContractEvent, ContractState, NotifyRequest


@dataclass
class Journal:
    state: ContractState
    clock: Callable[[], datetime]
    events: list[ContractEvent] = field(default_factory=list)
    notices: list[NotifyRequest] = field(default_factory=list)
    fell_due: list[tuple[str, str]] = field(default_factory=list)  # (item_type, key)
    resolved: list[tuple[str, str]] = field(default_factory=list)

    def now(self) -> datetime:
        return self.clock()

    def emit(self, type_: str, data: dict[str, Any], actor: str = "system") -> ContractEvent:
        self.state.version += 1
        event = ContractEvent(self.state.version, type_, self.clock(), data, actor)
        self.events.append(event)
        return event

    def notify(self, request: NotifyRequest) -> None:
        """A notice to send now (hand-off, approval request, amended date); logged as an event,
        whose number keys it in the outbox (``NotifyRequest.seq``)."""
        event = self.emit(f"notification.{request.kind}", {"item_type": request.item_type, "key": request.item_key,
                                                           "level": request.level, "to": request.to, "cc": request.cc})
        request.seq = event.seq
        self.notices.append(request)

    def item_fell_due(self, item_type: str, key: str) -> None:
        self.fell_due.append((item_type, key))

    def item_resolved(self, item_type: str, key: str) -> None:
        self.resolved.append((item_type, key))
