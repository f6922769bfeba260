"""Authentication at the door: every request but health, docs, login and static files must carry
valid credentials, else 401 problem+json (a browser asking for a page is sent to the login page).

Runs as plain ASGI middleware, before routing and body parsing, so an anonymous request learns
nothing else (not even whether its body is valid).  It also opens the request's context
(``api.principal.CURRENT``: request id, caller) that the policy and the audit trail fill in.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse

from api.auth.principal import CURRENT, RequestContext
from api.auth.service import Unauthenticated, authenticate, authenticate_at_once
from api.platform.database import DatabaseStalled, in_thread
from api.platform.problems import problem_response

PUBLIC_PATHS = frozenset({
    "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/auth/token",
    "/ui/login", "/ui/logout",
})
PUBLIC_PREFIXES = ("/static/",)
PROBES = frozenset({"/healthz", "/readyz"})


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class AuthMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in PROBES:  # answered whatever the database does: no credentials read
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        ctx = RequestContext(request_id=request_id[:64], method=scope["method"], path=scope["path"])
        token = CURRENT.set(ctx)
        try:
            principal = None
            try:
                found = authenticate_at_once(request)
                principal = found if found is not ... else await in_thread(
                    request.app.state.settings.database_call_seconds, _authenticate, request)
            except DatabaseStalled:
                if not is_public(scope["path"]):  # a public page needs no caller: served anonymously
                    stalled = problem_response(503, "the contract database is not answering; try again shortly",
                                               scope["path"], slug="database-unavailable")
                    stalled.headers["Retry-After"] = "5"
                    await stalled(scope, receive, send)
                    return
            except Unauthenticated as exc:
                if not is_public(scope["path"]):
                    await self._refuse(request, exc.detail)(scope, receive, send)
                    return
            if principal is None and not is_public(scope["path"]):
                await self._refuse(request, "authentication required: log in at POST /auth/token "
                                   "or send an API key")(scope, receive, send)
                return
            ctx.principal = principal
            scope.setdefault("state", {})["principal"] = principal
            await self.app(scope, receive, send)
        finally:
            CURRENT.reset(token)

    @staticmethod
    def _refuse(request: Request, detail: str):
        path = request.url.path
        if path.startswith("/ui") and "text/html" in request.headers.get("accept", ""):
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)
        response = problem_response(401, detail, path, slug="unauthenticated")
        response.headers["WWW-Authenticate"] = 'Bearer realm="contracts"'
        return response


def _authenticate(request: Request):
    with request.app.state.sessions() as session:
        return authenticate(request, session)
