"""JSON for the shared dataclasses, the same way Temporal's data converter writes them."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from temporalio.converter import AdvancedJSONEncoder, value_to_type

T = TypeVar("T")


def to_jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=AdvancedJSONEncoder))


def from_jsonable(cls: type[T], data: Any) -> T:
    return value_to_type(cls, data)
