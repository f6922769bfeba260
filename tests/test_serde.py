"""core.serde.to_jsonable builds the JSON of the shared dataclasses directly: it must give exactly
what the round trip through Temporal's encoder gives (``json.loads(json.dumps(v, cls=AdvancedJSONEncoder))``),
which is what the read model has always stored."""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from temporalio.converter import AdvancedJSONEncoder

from core.serde import to_jsonable
from tests.helpers import make_spec
from workflows.contract import initial_state
from workflows.types import ContractStatus


class Level(enum.IntEnum):
    LOW = 1


@dataclass(frozen=True)
class Inner:
    at: datetime
    tags: tuple[str, ...] = ("a", "b")


@dataclass
class Outer:
    inner: Inner
    by_number: dict[int, str] = field(default_factory=lambda: {1: "one"})
    by_status: dict[str, list[Inner]] = field(default_factory=dict)
    status: ContractStatus = ContractStatus.ACTIVE
    level: Level = Level.LOW
    seen: frozenset[str] = frozenset({"x"})
    ratio: float = 0.5


def _reminder_plans():
    """The outbox rows' requests: every reminder a new contract plans (what the projection writes most)."""
    from workflows.contract import reminders

    state = initial_state(make_spec(NOW, notifications={"reminders": ["P7D", "P1D"]}))
    from workflows.contract import schedule

    schedule.date_open_items(state, None)
    plans = [reminders.plan(state, t, item, NOW - timedelta(days=30)) for t, item in reminders.reminder_items(state)]
    notices = [n for plan in plans for n in plan.notices]
    assert notices, "the contract plans reminders"
    return [notices[0].request, notices[-1]]


def _round_trip(value):
    return json.loads(json.dumps(value, cls=AdvancedJSONEncoder))


NOW = datetime(2026, 12, 7, 10, 0, tzinfo=timezone(timedelta(hours=8)))
CASES = [
    None, True, 3, "文本", 1.5, [1, "a", None], (1, (2, 3)), {"k": [NOW, {"n": 1}]},
    {2: "int key", None: "none key", True: "bool key", 1.5: "float key"}, {ContractStatus.ACTIVE: "enum key"},
    ContractStatus.COMPLETED, Level.LOW, NOW, {"b", "a"},
    Outer(Inner(NOW), by_status={"late": [Inner(NOW, ("z",))]}),
    make_spec(NOW),
    initial_state(make_spec(NOW)),
    *_reminder_plans(),
]


@pytest.mark.parametrize("value", CASES, ids=lambda v: type(v).__name__)
def test_the_same_json_as_the_round_trip(value):
    got = to_jsonable(value)
    assert got == _round_trip(value)
    assert json.dumps(got, sort_keys=True) == json.dumps(_round_trip(value), sort_keys=True)


def test_what_the_round_trip_refuses_is_refused_alike_and_odd_floats_stay():
    for bad in (Decimal("1.00"), date(2026, 1, 1), {"d": Decimal("1")}):
        with pytest.raises(TypeError):
            _round_trip(bad)
        with pytest.raises(TypeError):
            to_jsonable(bad)
    assert math.isnan(to_jsonable(float("nan"))) and to_jsonable(float("inf")) == _round_trip(float("inf"))
