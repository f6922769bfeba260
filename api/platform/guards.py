"""Request bodies the API cannot safely read are refused at the door, as a 4xx problem, never a 500.

* Larger than ``MAX_JSON_BODY_BYTES`` (8 MiB; uploads have their own ``MAX_UPLOAD_BYTES``): 413,
  as soon as Content-Length says so or the body passes the limit while it is read.
* JSON nested deeper than ``MAX_JSON_DEPTH`` (32 arrays or objects; the API's own bodies nest
  five deep): 422.  Deeper documents exhaust the recursion of whatever walks them (json, pydantic,
  this guard), and no request of this API needs them.

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

from api.platform.problems import problem_response

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_JSON_DEPTH = 32
_TEXT_MESSAGE = "NUL characters and unpaired UTF-16 surrogates are not allowed in text"
_DEPTH_MESSAGE = f"JSON nested more than {MAX_JSON_DEPTH} levels deep is not accepted"


class _TooLarge(Exception):
    pass


def _bad_text(value: str) -> bool:
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return True
    return False


def json_problem(value: Any) -> str | None:
    """What is wrong with a parsed JSON document (too deep, or text the databases cannot store), or
    None.  Walked with a stack, not recursion: the depth is what is being checked."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _bad_text(item):
                return _TEXT_MESSAGE
        elif isinstance(item, (list, dict)):
            if depth > MAX_JSON_DEPTH:
                return _DEPTH_MESSAGE
            if isinstance(item, dict):
                if any(_bad_text(k) for k in item):
                    return _TEXT_MESSAGE
                item = item.values()
            stack.extend((v, depth + 1) for v in item)
    return None


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
        where, message = None, _TEXT_MESSAGE
        instance = scope["path"].replace("\x00", "\\u0000")
        if _bad_text(scope["path"]):
            where = "path"
        elif b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
            where = "query"
        if where is None and scope["method"] in _BODY_METHODS and not _is_multipart(scope):
            limit = scope["app"].state.settings.max_json_body_bytes
            try:
                body, receive = await _buffer(receive, _declared_length(scope), limit)
            except _TooLarge:
                await problem_response(413, f"the request body is larger than {limit} bytes (MAX_JSON_BODY_BYTES)",
                                       instance)(scope, receive, send)
                return
            if body is None:
                return  # the client left
            try:
                found = json_problem(json.loads(body))
            except ValueError:  # not JSON: the route answers that
                found = None
            except RecursionError:  # deeper than the parser itself goes
                found = _DEPTH_MESSAGE
            if found is not None:
                where, message = "body", found
        if where is None:
            await self.app(scope, receive, send)
            return
        await problem_response(422, f"{where}: {message}", instance,
                               slug="validation", errors=[{"field": where, "message": message}])(scope, receive, send)


def _declared_length(scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed Content-Length itself
    return None


async def _buffer(receive, declared: int | None, limit: int):
    """The whole request body, and a ``receive`` that hands it on; ``_TooLarge`` past ``limit``
    bytes (at once when the declared length says so: nothing is read)."""
    if declared is not None and declared > limit:
        raise _TooLarge
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, receive
        chunks += message.get("body", b"")
        if len(chunks) > limit:
            raise _TooLarge
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
