"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Each generated request that carries a *valid* ``Idempotency-Key`` gets a key of its own: the
generator draws small keys ("0", "A"...) again and again, and the API rightly refuses a key
reused with another body (422) or answers the first request's stored response -- which would turn
every later test case on that route into a test of the first one.  Invalid keys (empty, too long,
spaces) are left as generated, so their rejection is still tested.  Replays, reuse and
concurrency are tested in tests/test_idempotency.py.
"""

from __future__ import annotations

import itertools
import re

import schemathesis

_VALID_KEY = re.compile(r"^[!-~]{1,255}$")
_serial = itertools.count(1)


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers
    if not headers:
        return
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str) and _VALID_KEY.match(headers[name]):
            suffix = f"~{next(_serial)}"
            headers[name] = headers[name][: 255 - len(suffix)] + suffix
