"""The OpenAPI document says what the API really answers (checked by schemathesis, tests/test_schemathesis.py).

FastAPI's generated document is completed here, in one place, rather than on every route:

* every error is ``application/problem+json`` with the ``Problem`` schema (RFC 9457), including
  FastAPI's default 422 (which it documents as ``application/json`` ``HTTPValidationError``);
* operations with parameters or a body declare 422 (invalid input); with a body, 400 too (a body
  that cannot be decoded);
* POST and PATCH operations declare the optional ``Idempotency-Key`` header (api/idempotency.py)
  and its answers: 409 (a request with the key in progress), 422 (key reused for another request).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from api.idempotency import HEADER, HEADER_DESCRIPTION, KEY_PATTERN, MAX_KEY_LENGTH, METHODS
from api.problems import PROBLEM_JSON

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
    422: "Invalid input",
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _REF}}}


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
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
