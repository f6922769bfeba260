"""Text the databases cannot store is refused at the door, as a 422 problem, never a 500.

PostgreSQL text cannot hold NUL (U+0000), and neither database driver can encode a lone UTF-16
surrogate (JSON allows ``"\\ud800"``).  Such characters mean nothing in this API's data, so a
request carrying them -- in its path, its query string or any string (or key) of its JSON body --
is refused before a route sees it, the same way on SQLite and PostgreSQL (found by schemathesis,
tests/test_schemathesis.py).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from api.problems import problem_response

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _bad_text(value: str) -> bool:
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return True
    return False


def _bad_json(value: Any) -> bool:
    if isinstance(value, str):
        return _bad_text(value)
    if isinstance(value, list):
        return any(_bad_json(v) for v in value)
    if isinstance(value, dict):
        return any(_bad_text(k) or _bad_json(v) for k, v in value.items())
    return False


def _is_multipart(scope) -> bool:
    # Uploads (documents) stream through untouched: their form fields are checked by their route,
    # and a 25 MB file is not buffered here just to find it is not JSON.
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.lower().startswith(b"multipart/")
    return False


class TextGuardMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = None
        if _bad_text(scope["path"]):
            where = "path"
        elif b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
            where = "query"
        if where is None and scope["method"] in _BODY_METHODS and not _is_multipart(scope):
            body, receive = await _buffer(receive)
            if body is None:
                return  # the client left
            try:
                where = "body" if _bad_json(json.loads(body)) else None
            except ValueError:  # not JSON: the route answers that
                pass
        if where is None:
            await self.app(scope, receive, send)
            return
        message = "NUL characters and unpaired UTF-16 surrogates are not allowed in text"
        await problem_response(422, f"{where}: {message}", scope["path"].replace("\x00", "\\u0000"),
                               slug="validation", errors=[{"field": where, "message": message}])(scope, receive, send)


async def _buffer(receive):
    """The whole request body, and a ``receive`` that hands it on."""
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, receive
        chunks += message.get("body", b"")
        if not message.get("more_body", False):
            break
    body = bytes(chunks)
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def install(app) -> None:
    app.add_middleware(TextGuardMiddleware)
