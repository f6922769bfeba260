"""The contract engine's pure rules, without Temporal: a state, a journal with a fixed clock."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.helpers import make_spec
from workflows.contract import initial_state, schedule
from workflows.contract.journal import Journal

NOW = datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Contract:
    def __init__(self, **spec) -> None:
        self.clock = Clock(NOW)
        self.spec = make_spec(NOW, **spec)
        self.state = initial_state(self.spec)
        self.journal = Journal(self.state, self.clock)
        self.date()

    def date(self) -> None:
        schedule.date_open_items(self.state, None)

    def at(self, when: datetime) -> Contract:
        self.clock.now = when
        return self

    def milestone(self, key: str):
        return next(m for m in self.state.milestones if m.key == key)

    def installment(self, key: str):
        return next(i for i in self.state.installments if i.key == key)

    def event_types(self) -> list[str]:
        return [e.type for e in self.journal.events]


@pytest.fixture
def contract():
    return Contract
