"""The OpenAPI document says what the API really answers (checked by schemathesis, tests/test_schemathesis.py).

FastAPI's generated document is completed here, in one place, rather than on every route:

* every error is ``application/problem+json`` with the ``Problem`` schema (RFC 9457), including
  FastAPI's default 422 (which it documents as ``application/json`` ``HTTPValidationError``);
* operations with parameters or a body declare 422 (invalid input); with a body, 400 too (a body
  that cannot be decoded) and 413 (a body over the size limit, api/platform/guards.py);
* POST and PATCH operations declare the optional ``Idempotency-Key`` header (api/platform/idempotency.py)
  and its answers: 409 (a request with the key in progress), 422 (key reused for another request);
* security (api/auth/service.py): a bearer token from ``POST /auth/token`` (OAuth2 password flow, so the
  /docs "Authorize" button logs in), an API key in ``X-API-Key``, or HTTP Basic with an API key as
  the password; every operation but the public ones requires one of them and declares 401 and 403
  (and 404 for a contract the caller may not see).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from api.platform.idempotency import HEADER, HEADER_DESCRIPTION, KEY_PATTERN, MAX_KEY_LENGTH, METHODS
from api.platform.problems import PROBLEM_JSON

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; more members may be present (e.g. `errors`, `id`).",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A URI reference naming the kind of problem"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "What went wrong, in a sentence a person understands"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                "required": ["field", "message"],
            },
        },
    },
}
_REF = {"$ref": "#/components/schemas/Problem"}
_DESCRIPTIONS = {
    400: "The body cannot be decoded (not UTF-8 JSON)",
    409: "Conflict with the current state",
    413: "The body is larger than MAX_JSON_BODY_BYTES (8 MiB), or an upload larger than MAX_UPLOAD_BYTES",
    422: "Invalid input",
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _REF}}}


SECURITY_SCHEMES: dict[str, Any] = {
    "login": {"type": "oauth2", "description": "A person's access token (log in with user id and password)",
              "flows": {"password": {"tokenUrl": "/auth/token", "scopes": {}}}},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "A service account's API key (ck_...), also accepted as 'Authorization: Bearer'"},
    "basicApiKey": {"type": "http", "scheme": "basic", "description": "Any user name, an API key as the password"},
}
SECURITY: list[dict[str, list[str]]] = [{"login": []}, {"apiKey": []}, {"basicApiKey": []}]


def _public(path: str) -> bool:
    from api.auth.middleware import is_public

    return is_public(path)


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, path_item in doc.get("paths", {}).items():
        for op in path_item.values():
            if not isinstance(op, dict) or "responses" not in op or _public(path):
                continue
            op["security"] = SECURITY
            op["responses"].setdefault("401", _problem("Not authenticated: no or invalid credentials"))
            op["responses"].setdefault("403", _problem("Not allowed for the caller's roles (the reason says why)"))
            if "{contract_id}" in path:
                op["responses"].setdefault("404", _problem("No such contract, or not one the caller may see"))
    for path_item in doc.get("paths", {}).values():
        for method, op in path_item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = op["responses"]
            for code, response in responses.items():
                content = response.get("content", {})
                if code.startswith(("4", "5")):
                    # FastAPI's default 422 says application/json HTTPValidationError: the API answers problems.
                    response["content"] = {PROBLEM_JSON: {"schema": _REF}}
                    if response.get("description") in (None, "Validation Error"):
                        response["description"] = _DESCRIPTIONS.get(int(code), "Problem details (RFC 9457)")
                elif PROBLEM_JSON in content and not content[PROBLEM_JSON]:
                    content[PROBLEM_JSON] = {"schema": _REF}
            has_input = bool(op.get("parameters")) or "requestBody" in op
            if method.upper() in METHODS:
                op.setdefault("parameters", []).append({
                    "name": HEADER,
                    "in": "header",
                    "required": False,
                    "description": HEADER_DESCRIPTION,
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY_PATTERN},
                })
                responses.setdefault("409", _problem(_DESCRIPTIONS[409] + "; or a request with this Idempotency-Key "
                                                     "is still in progress"))
                has_input = True
            if has_input:
                responses.setdefault("422", _problem(_DESCRIPTIONS[422]))
            if "requestBody" in op:
                responses.setdefault("400", _problem(_DESCRIPTIONS[400]))
                responses.setdefault("413", _problem(_DESCRIPTIONS[413]))
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{unused}"' not in json.dumps(doc):
            schemas.pop(unused, None)
    return doc


def install(app: FastAPI) -> None:
    generate = app.openapi  # FastAPI's, cached on the app; regenerated if routes change
    completed: list[int] = []

    def openapi() -> dict[str, Any]:
        doc = generate()
        if not completed or completed[-1] != id(doc):
            complete(doc)
            completed.append(id(doc))
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
