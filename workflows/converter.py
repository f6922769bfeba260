"""The data converter every client and worker of this service uses: Temporal's JSON, compact.

Payloads are JSON as with Temporal's default converter (any SDK, the Temporal UI and ``temporal
workflow show`` read them), with two differences that keep histories small:
  * a dataclass field whose value is its default is left out (decoding fills the default back in,
    with this converter or the default one), so a milestone without costs, reminders or notes
    costs only what it says;
  * text is written as UTF-8, not ``\\uXXXX`` escapes (a Chinese milestone name is half the size).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import temporalio.api.common.v1
from temporalio.converter import (
    AdvancedJSONEncoder,
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)

_MISSING = dataclasses.MISSING


def _is_default(f: dataclasses.Field[Any], value: Any) -> bool:
    if f.default is not _MISSING:
        return bool(value == f.default) and type(value) is type(f.default) or (value is None and f.default is None)
    if f.default_factory is not _MISSING:
        return bool(value == f.default_factory())
    return False


class CompactJSONEncoder(AdvancedJSONEncoder):
    def default(self, o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return {f.name: v for f in dataclasses.fields(o) if not _is_default(f, v := getattr(o, f.name))}
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


class CompactPayloadConverter(CompositePayloadConverter):
    def __init__(self) -> None:
        super().__init__(*[CompactJSONPayloadConverter() if isinstance(c, JSONPlainPayloadConverter) else c
                           for c in DefaultPayloadConverter.default_encoding_payload_converters])


data_converter = dataclasses.replace(DataConverter.default, payload_converter_class=CompactPayloadConverter)
