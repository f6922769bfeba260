"""JSON for the shared dataclasses, the same way Temporal's data converter writes them."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any, TypeVar

from temporalio.converter import AdvancedJSONEncoder, value_to_type

T = TypeVar("T")

_PLAIN = (str, int, bool, type(None))
_FIELDS: dict[type, tuple[str, ...] | None] = {}


def to_jsonable(value: Any) -> Any:
    """What ``json.loads(json.dumps(value, cls=AdvancedJSONEncoder))`` gives, built directly.

    The projection turns every notice, milestone rule and event into JSON this way, and the round
    trip (``dataclasses.asdict`` deep-copies each value, then the text is parsed back) was a
    measurable part of a new contract's worker time.  The common shapes (dataclasses, dicts with
    text keys, lists, tuples, text, numbers, enums over them, datetimes) are walked here; anything
    else takes the round trip, so the result is the same for every value."""
    kind = type(value)
    if kind in _PLAIN or kind is float:
        return value
    if kind is list or kind is tuple:
        return [to_jsonable(v) for v in value]
    if kind is dict:
        if all(type(k) is str for k in value):
            return {k: to_jsonable(v) for k, v in value.items()}
        return _round_trip(value)
    if kind is datetime:
        return value.isoformat()
    names = _dataclass_fields(kind)
    if names is not None:
        return {name: to_jsonable(getattr(value, name)) for name in names}
    if isinstance(value, str):  # a StrEnum: JSON writes its text
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):  # an IntEnum: its number
        return int(value)
    return _round_trip(value)


def _dataclass_fields(kind: type) -> tuple[str, ...] | None:
    try:
        return _FIELDS[kind]
    except KeyError:
        names = tuple(f.name for f in dataclasses.fields(kind)) if dataclasses.is_dataclass(kind) else None
        _FIELDS[kind] = names
        return names


def _round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=AdvancedJSONEncoder))


def from_jsonable(cls: type[T], data: Any) -> T:
    return value_to_type(cls, data)
