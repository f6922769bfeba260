"""RFC 9457 problem details: every error the API returns is ``application/problem+json``."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("api")

PROBLEM_JSON = "application/problem+json"
# A route's OpenAPI ``responses``; the problem+json ones are completed with the Problem schema by
# api/platform/openapi.py.
Responses = dict[int | str, dict[str, Any]]
PROBLEM_RESPONSE: dict[str, Any] = {"content": {PROBLEM_JSON: {}}, "description": "Problem details (RFC 9457)"}

_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the current state",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


class Problem(Exception):
    def __init__(self, status: int, detail: str, *, slug: str | None = None, errors: list | None = None,
                 headers: dict[str, str] | None = None, **extra: Any):
        self.status = status
        self.detail = detail
        self.slug = slug or TITLES.get(status, "error").lower().replace(" ", "-").replace("'", "")
        self.errors = errors
        self.headers = headers or {}  # e.g. Retry-After
        self.extra = extra
        super().__init__(detail)


def _field_error(e: dict) -> dict[str, str]:
    """One pydantic error as ``{field, message}``.  Malformed JSON names no field: its location is
    a character offset, which would read as a field called "1"."""
    if e.get("type") == "json_invalid":
        where = [p for p in e.get("loc", ()) if p != "body"]
        at = f" at character {where[0]}" if where else ""
        reason = (e.get("ctx") or {}).get("error", "")
        return {"field": "", "message": f"the body is not valid JSON{at}" + (f": {reason}" if reason else "")}
    return {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg", "")}


def problem_response(
    status: int, detail: str, instance: str, *, slug: str | None = None, errors: list | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"/problems/{slug or TITLES.get(status, 'error').lower().replace(' ', '-').replace(chr(39), '')}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if errors:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document declares for the request's path (a literal path wins over templates)."""
    paths = request.app.openapi().get("paths", {})
    path = request.url.path
    if path in paths:
        return sorted(m.upper() for m in paths[path] if m in _HTTP_METHODS)
    methods: set[str] = set()
    for template, item in paths.items():
        if re.fullmatch(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)), path):
            methods |= {m.upper() for m in item if m in _HTTP_METHODS}
    return sorted(methods)


def database_unavailable(exc: BaseException) -> bool:
    """Whether a SQLAlchemy error means "the database cannot be reached" (retry later) rather than a bug."""
    if isinstance(exc, SQLAlchemyTimeoutError):  # no pooled connection came free in time
        return True
    return isinstance(exc, (OperationalError, InterfaceError)) or bool(getattr(exc, "connection_invalidated", False))


# Renders a problem as a page for a person in the dashboard (api/ui/service.py ``problem_page``),
# handed in by the app: the problems know nothing of the dashboard.
PageRenderer = Callable[[Request, "Problem"], Response]


def install(app: FastAPI, page: PageRenderer | None = None) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        if page is not None and request.url.path.startswith("/ui") and "text/html" in request.headers.get("accept", ""):
            # A person in the dashboard (e.g. refused a page: 403/404, or a bad filter) gets a page, not JSON.
            answer = page(request, exc)
            answer.headers.update(exc.headers)
            return answer
        response = problem_response(exc.status, exc.detail, request.url.path, slug=exc.slug, errors=exc.errors,
                                    **exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [_field_error(e) for e in exc.errors()]
        detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors) or "the request is not valid"
        return await _problem(request, Problem(422, detail, slug="validation", errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "Error")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such resource: {request.url.path}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110: Allow lists every method of the resource, from all its routes
            allowed = _allowed_methods(request)
            if allowed:  # else (a path outside the document, e.g. /ui) Starlette's own Allow stands
                headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed on {request.url.path}; allowed: {headers.get('Allow', '')}"
        response = problem_response(exc.status_code, detail, request.url.path)
        response.headers.update(headers)
        return response

    @app.exception_handler(DBAPIError)
    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _database(request: Request, exc: Exception):
        # The database is unreachable (down, restarting, connections dropped, pool exhausted):
        # a 503 the client can retry, not a 500.  Other database errors are bugs: 500.
        if database_unavailable(exc):
            log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
            response = problem_response(503, "the contract database cannot be reached right now; try again shortly",
                                        request.url.path, slug="database-unavailable")
            response.headers["Retry-After"] = "5"
            return response
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "an unexpected error occurred; it has been logged", request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "an unexpected error occurred; it has been logged", request.url.path)
