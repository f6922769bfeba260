"""The data converter every client and worker of this service uses: Temporal's JSON, compact.

Payloads are JSON as with Temporal's default converter (any SDK, the Temporal UI and ``temporal
workflow show`` read them), with two differences that keep histories small:
  * a dataclass field whose value is its default is left out (decoding fills the default back in,
    with this converter or the default one), so a milestone without costs, reminders or notes
    costs only what it says;
  * text is written as UTF-8, not ``\\uXXXX`` escapes (a Chinese milestone name is half the size).

A local activity's input is not in the history, but Temporal's core keeps it with the cached
workflow until the run is evicted or continues as new: a contract's first projection delta (every
item, every reminder plan, ~21 KB) was ~1/8 of a cached contract's memory.  So a large one is
sent zlib-compressed (``json/plain+zlib``, ~8x smaller, ~0.2 ms); only local activities, never
what the history or the Temporal UI shows.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import types
import typing
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import temporalio.api.common.v1
from temporalio.converter import (
    ActivitySerializationContext,
    AdvancedJSONEncoder,
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    EncodingPayloadConverter,
    JSONPlainPayloadConverter,
    SerializationContext,
    value_to_type,
)

_MISSING = dataclasses.MISSING


_REQUIRED, _VALUE, _FACTORY = 0, 1, 2


_FIELD_DEFAULTS: dict[type, tuple[tuple[str, int, Any], ...] | None] = {}


def _field_defaults(cls: type) -> tuple[tuple[str, int, Any], ...] | None:
    """A dataclass's fields as (name, kind of default, default), found once per class; None for
    any other class.  A factory's default is made once: the factories of these types build
    constants (``list``, ``lambda: ["P7D", "P1D"]``), and calling them for every value encoded,
    with ``dataclasses.fields`` and ``is_dataclass``, was ~15 % of a payment's workflow task
    (measured: the sandbox wraps every ``isinstance``)."""
    try:
        return _FIELD_DEFAULTS[cls]
    except KeyError:
        found = _FIELD_DEFAULTS[cls] = _find_field_defaults(cls)
        return found


def _find_field_defaults(cls: type) -> tuple[tuple[str, int, Any], ...] | None:
    if not dataclasses.is_dataclass(cls):
        return None
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not _MISSING:
            out.append((f.name, _VALUE, f.default))
        elif f.default_factory is not _MISSING:
            out.append((f.name, _FACTORY, f.default_factory()))
        else:
            out.append((f.name, _REQUIRED, None))
    return tuple(out)


def _is_default(kind: int, default: Any, value: Any) -> bool:
    if kind == _VALUE:
        return bool(value == default) and type(value) is type(default) or (value is None and default is None)
    if kind == _FACTORY:
        return bool(value == default)
    return False


class CompactJSONEncoder(AdvancedJSONEncoder):
    def default(self, o: Any) -> Any:
        kind_of_o = type(o)
        fields = _field_defaults(kind_of_o)  # (a dataclass itself, a class, is not one: type(o) is type)
        if fields is not None:
            return {name: v for name, kind, default in fields if not _is_default(kind, default, v := getattr(o, name))}
        if kind_of_o is datetime:  # as Temporal's encoder does, without its isinstance chain
            return o.isoformat()
        return super().default(o)


class CompactJSONPayloadConverter(JSONPlainPayloadConverter):
    def __init__(self) -> None:
        super().__init__(encoder=CompactJSONEncoder)

    def to_payload(self, value: Any) -> temporalio.api.common.v1.Payload | None:
        return temporalio.api.common.v1.Payload(
            metadata={"encoding": self.encoding.encode()},
            data=json.dumps(value, cls=CompactJSONEncoder, separators=(",", ":"), sort_keys=True,
                            ensure_ascii=False).encode(),
        )

    def from_payload(self, payload: temporalio.api.common.v1.Payload, type_hint: type | None = None) -> Any:
        try:
            obj = json.loads(payload.data)
        except json.JSONDecodeError as err:
            raise RuntimeError("Failed parsing") from err
        return decoder(type_hint)(obj) if type_hint is not None else obj


# ---------------------------------------------------------------- decoding, fast
# Temporal's ``value_to_type`` resolves every dataclass's type hints on every value it decodes
# (measured: 2.2 ms for a payment's projection delta, 20 ms for a new contract's, 6.4 ms for a
# contract's state).  The same rules, with each type's decoder built once: about ten times less.
# Anything unusual (a union of several types, a Literal, a TypedDict...) is left to Temporal's.

Decoder = Callable[[Any], Any]


def _primitive(kind: type) -> Decoder:
    def decode(value: Any) -> Any:
        # ``type(...) is`` first: JSON gives exact types, and in the workflow sandbox every
        # ``isinstance`` is a wrapped call (a contract's state decodes thousands of values).
        if kind is bool:
            if type(value) is not bool and not isinstance(value, bool):
                raise TypeError(f"Expected value to be bool, was {type(value)}")
            return value
        if kind is str:
            if type(value) is not str and not isinstance(value, str):
                raise TypeError(f"Expected value to be str, was {type(value)}")
            return value
        if type(value) is kind:
            return value
        if not isinstance(value, (int, float)):
            raise TypeError(f"Expected value to be int|float, was {type(value)}")
        return kind(value)

    return decode


def _datetime(value: Any) -> datetime:
    if type(value) is not str:
        if isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise TypeError(f"Expected datetime or ISO8601 string, got {type(value)}")
    try:
        return datetime.fromisoformat(value)
    except ValueError as err:
        raise TypeError(f"Failed parsing datetime string: {value}") from err


def _dataclass(cls: type) -> Decoder:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, f.init, decoder(hints[f.name])) for f in dataclasses.fields(cls)]

    def decode(value: Any) -> Any:
        if type(value) is not dict and not isinstance(value, dict):
            raise TypeError(f"Cannot convert to dataclass {cls}, value is {type(value)} not dict")
        kwargs: dict[str, Any] = {}
        late: dict[str, Any] = {}
        for name, init, field_decoder in fields:
            if name in value:
                try:
                    converted = field_decoder(value[name])
                except Exception as err:
                    raise TypeError(f"Failed converting field {name} on dataclass {cls}") from err
                (kwargs if init else late)[name] = converted
        obj = cls(**kwargs)  # a missing required field fails here, as with Temporal's
        for name, converted in late.items():
            object.__setattr__(obj, name, converted)
        return obj

    return decode


@functools.cache
def decoder(hint: Any) -> Decoder:
    """The function that turns JSON-loaded ``value`` into ``hint`` (Temporal's rules)."""
    if hint is Any or hint is object:
        return lambda value: value
    if hint is datetime:
        return _datetime
    if hint in (int, float, bool, str):
        return _primitive(hint)
    if inspect.isclass(hint) and issubclass(hint, enum.Enum):
        return hint  # Temporal's too: the enum from its value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _dataclass(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = decoder(next(a for a in args if a is not type(None)))
        return lambda value: None if value is None else inner(value)
    if origin is list and len(args) == 1:
        item = decoder(args[0])

        def decode_list(value: Any) -> list[Any]:
            if type(value) is not list and not isinstance(value, list):
                raise TypeError(f"Expected list, got {type(value)}")
            return [item(v) for v in value]

        return decode_list
    if origin is dict and len(args) == 2 and args[0] is str:
        val = decoder(args[1])

        def decode_dict(value: Any) -> dict[str, Any]:
            if type(value) is not dict and not isinstance(value, dict):
                raise TypeError(f"Expected dict, got {type(value)}")
            return {k: val(v) for k, v in value.items()}

        return decode_dict
    if hint in (list, dict):
        return lambda value: value
    return lambda value: value_to_type(hint, value)


COMPRESS_LOCAL_INPUT_OVER = 2048  # bytes of JSON


def _is_local(context: SerializationContext) -> bool:
    return isinstance(context, ActivitySerializationContext) and context.is_local


class ZlibJSONPayloadConverter(EncodingPayloadConverter):
    """``json/plain+zlib``: compact JSON, compressed.  Decodes wherever it is met; encodes only
    a large dataclass, and only in the composite used for local activities' inputs
    (``CompactPayloadConverter.with_context``); otherwise declines, so plain JSON is written."""

    def __init__(self, local: bool = False) -> None:
        self._local = local
        self._json = CompactJSONPayloadConverter()

    @property
    def encoding(self) -> str:
        return "json/plain+zlib"

    def to_payload(self, value: Any) -> temporalio.api.common.v1.Payload | None:
        if not self._local or not dataclasses.is_dataclass(value):
            return None
        plain = self._json.to_payload(value)
        if plain is None or len(plain.data) <= COMPRESS_LOCAL_INPUT_OVER:
            return None
        return temporalio.api.common.v1.Payload(metadata={"encoding": self.encoding.encode()},
                                                data=zlib.compress(plain.data))

    def from_payload(self, payload: temporalio.api.common.v1.Payload, type_hint: type | None = None) -> Any:
        return self._json.from_payload(temporalio.api.common.v1.Payload(data=zlib.decompress(payload.data)), type_hint)


_ZLIB = ZlibJSONPayloadConverter()
_LOCAL_ZLIB = ZlibJSONPayloadConverter(local=True)


class CompactPayloadConverter(CompositePayloadConverter):
    def __init__(self, local: bool = False) -> None:
        super().__init__(_LOCAL_ZLIB if local else _ZLIB,
                         *[CompactJSONPayloadConverter() if isinstance(c, JSONPlainPayloadConverter) else c
                           for c in DefaultPayloadConverter.default_encoding_payload_converters])

    def with_context(self, context: SerializationContext) -> CompactPayloadConverter:
        # Stateless: one converter for local activities' inputs, this one for everything else
        # (Temporal would build a new composite for every activity call otherwise).
        return _local_converter() if _is_local(context) else self


@functools.cache
def _local_converter() -> CompactPayloadConverter:
    return CompactPayloadConverter(local=True)


data_converter = dataclasses.replace(DataConverter.default, payload_converter_class=CompactPayloadConverter)
