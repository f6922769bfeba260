"""Schemathesis against the live OpenAPI document, with every check it has (issue #7, "API abuse").

The real service (Temporal dev server, worker, uvicorn, SQLite) serves ``/openapi.json``; the
schemathesis CLI (a subprocess, so this event loop keeps serving) reads it and runs its phases
``examples``, ``coverage`` (deterministic boundary and negative cases, undeclared methods, missing
headers), ``fuzzing`` (property-based, ``--generation-deterministic``: the same cases every run,
one worker: in the same order) and ``stateful`` (sequences along the links schemathesis infers,
e.g. POST /webhooks then PATCH/DELETE it) with ``--checks all``: no 5xx, status codes / content types / headers / bodies as declared,
schema-violating requests rejected, schema-valid requests accepted, 405 with ``Allow`` for
undeclared methods...  Done when it reports 0 failures.

The service is this module's own (fresh database, its own worker and task queue on the session's
dev server): the fuzzer creates hundreds of people, departments, subscriptions and contracts and
rewrites the seeded organisation, which the other API tests rely on.  Its webhook dispatcher is off
(generated subscriptions point at generated hosts) and its webhook timeout short (a ping to a
generated URL must not stall the run).

Real identifiers are mixed into generated ones (``dictionaries`` below, probability 0.5), so the
operations on ``/contracts/{id}/...``, ``/users/{id}``... reach their logic instead of answering 404.

**Where a 422 to schema-valid data is accepted** (``positive_data_acceptance``; see ``SEMANTIC_422``).
Only for operations whose validity depends on more than the shape the document can state: on the
contract's or the organisation's current state (a milestone whose dependency is open, a role the
amendment does not need, a manager who would form a cycle, a department that does not exist) or
on rules across fields (an amount's decimals depend on the currency, installments must add up to
the amount, an end date after the start).  Those answer a 422 problem naming the rule, by design
(README "Errors").  Everything else must accept what the document declares valid; the shapes that
can be stated (lengths, patterns, enums, integer/boolean/date-time types, non-nullable PATCH fields)
are stated in the pydantic schemas.  No check is switched off and no operation is excluded.

``Idempotency-Key`` is declared on every POST/PATCH, so schemathesis sends it (valid and invalid);
tests/schemathesis_hooks.py makes each valid generated key unique, see there why.  The key's
replay/reuse/concurrency semantics are tested in tests/test_idempotency.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from core.migrate import upgrade
from core.settings import Settings
from models.db import make_engine, make_session_factory
from tests.conftest import TEST_ADMIN_KEY, ARTIFACTS, Service, running_api, running_worker
from tests.helpers import contract_request

pytestmark = pytest.mark.devserver

ROOT = Path(__file__).resolve().parent.parent
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))

# (method, path) -> why a 422 to schema-valid data is right there.
SEMANTIC_422: dict[tuple[str, str], str] = {
    ("POST", "/contracts"): "rules across fields: amount decimals per currency, end after start, due rules, "
    "installments adding up to the amount, known playbook, ISO 8601 durations, milestone references",
    ("POST", "/contracts/{contract_id}/payments"): "the currency must be the contract's, the amount within its "
    "decimals",
    ("POST", "/contracts/{contract_id}/milestones/{key}/complete"): "a dependency still open; actual_cost "
    "within the contract currency's decimals",
    ("POST", "/contracts/{contract_id}/amendments"): "each change is judged against the contract: fields the "
    "kind needs, keys that exist, amounts and plans that add up",
    ("POST", "/contracts/{contract_id}/amendments/{amendment_id}/approve"): "the role must be one the "
    "amendment needs",
    ("POST", "/contracts/{contract_id}/amendments/{amendment_id}/reject"): "the role must be one the "
    "amendment needs",
    ("POST", "/users"): "department and manager must exist",
    ("PATCH", "/users/{user_id}"): "department and manager must exist; no manager cycle",
    ("POST", "/departments"): "head and default assignee must exist",
    ("PUT", "/departments/{key}"): "head and default assignee must exist",
}
# The same, for every operation whose path matches (method, regex).
SEMANTIC_422_REGEX: dict[tuple[str, str], str] = {
    ("GET", r"^/analytics/"): "rules across parameters: 'period' or 'from'/'to', not both; 'from' not after 'to'",
}
POSITIVE_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis' default


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def schemathesis_config(ids: dict[str, list]) -> str:
    """schemathesis.toml: real identifiers mixed into generated ones; the documented 422 allowances."""
    lines = [
        "[cache]", "enabled = false", "",
        # NUL is refused in every text (422, api/guards.py: PostgreSQL cannot store it) but the document does not
        # restate that on each string; test_text_the_database_cannot_store_is_refused covers it instead.
        "[generation]", "allow-x00 = false", "",
        "[dictionaries]",
    ]
    for name, values in ids.items():
        lines.append(f"{name} = {{ values = {_toml(values)} }}")
    lines.append("")
    lines.append("[parameters]")
    bindings = {
        "path.contract_id": "contracts", "path.key": "milestone_keys", "path.amendment_id": "amendments",
        "path.user_id": "users", "path.subscription_id": "subscriptions", "path.task_id": "tasks",
        "body.by": "users", "body.requested_by": "users", "body.owner": "users", "body.manager_id": "users",
        "body.head_id": "users", "body.default_assignee_id": "users", "body.department": "departments",
        "body.role": "roles", "body.currency": "currencies",
    }
    for key, dictionary in bindings.items():
        if dictionary in ids:
            lines.append(f'"{key}" = {{ dictionary = "{dictionary}", probability = 0.5 }}')
    allowances = [("include-path", k, v) for k, v in SEMANTIC_422.items()]
    allowances += [("include-path-regex", k, v) for k, v in SEMANTIC_422_REGEX.items()]
    for selector, (method, path), reason in allowances:
        lines += ["", f"# {reason}", "[[operations]]", f"include-method = {_toml(method)}",
                  f"{selector} = {_toml(path)}", "[operations.checks.positive_data_acceptance]",
                  f"expected-statuses = {_toml([*POSITIVE_DEFAULT, '422'])}"]
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def fuzzing_service(dev_env, database_url: str, smtp_port: int):
    settings = Settings(
        database_url=database_url,
        temporal_address=dev_env.client.service_client.config.target_host,
        task_queue=f"fuzz-{uuid.uuid4().hex[:8]}",
        reconcile_after_seconds=2,
        seed_demo_org=True,
        smtp_port=smtp_port,
        webhook_dispatch_enabled=False,
        webhook_timeout_seconds=2,
        admin_api_key=TEST_ADMIN_KEY,
        jwt_secret="fuzz-jwt-secret-" + "y" * 32,
        document_dir=str(Path(database_url.removeprefix("sqlite:///")).parent / "documents"),
    )
    async with running_worker(dev_env.client, settings, settings.task_queue):
        async with running_api(settings) as base_url:
            yield Service(base_url, dev_env.client, settings)


@pytest_asyncio.fixture(scope="module")
async def fuzz_service(dev_env, tmp_path_factory, mailbox):
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'contracts.db'}"
    upgrade(url)
    async with fuzzing_service(dev_env, url, mailbox.port) as service:
        yield service


async def real_identifiers(base_url: str) -> dict[str, list]:
    """Create what the path parameters can point at: contracts, an amendment, a subscription."""
    now = datetime.now(timezone.utc)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as c:
        contracts = []
        for n in range(2):
            r = await c.post("/contracts", json=contract_request(now, external_id=f"FUZZ-{n}-{uuid.uuid4().hex[:6]}"))
            assert r.status_code == 201, r.text
            contracts.append(r.json()["id"])
        r = await c.post(f"/contracts/{contracts[0]}/amendments", json={
            "requested_by": "li.wei", "reason": "Customer site not ready",
            "changes": [{"kind": "move_due", "key": "shipping", "shift": "P10D"}]})
        assert r.status_code == 201, r.text
        amendments = [r.json()["id"]]
        r = await c.post("/webhooks", json={"url": "http://127.0.0.1:9/nothing", "event_types": ["*"]})
        assert r.status_code == 201, r.text
        subscriptions = [r.json()["id"]]
        users = [u["id"] for u in (await c.get("/users")).json()]
        departments = [d["key"] for d in (await c.get("/departments")).json()]
        live = (await c.get(f"/contracts/{contracts[0]}")).json()
        keys = [m["key"] for m in live["milestones"]]
        tasks = [t["id"] for t in (await c.get("/tasks")).json()][:5]
    ids = {"contracts": contracts, "amendments": amendments, "subscriptions": subscriptions, "users": users,
           "departments": departments, "milestone_keys": keys, "roles": ["manager", "finance", "legal"],
           "currencies": ["CNY"]}
    if tasks:
        ids["tasks"] = tasks
    return ids


async def run_schemathesis(service, workdir: Path, ids: dict[str, list], *extra: str) -> tuple[int, str]:
    base_url = service.url  # the key goes in a header: schemathesis also checks that no credentials = 401
    config = workdir / "schemathesis.toml"
    config.write_text(schemathesis_config(ids))
    report = workdir / "report"
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{base_url}/openapi.json",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--workers", os.environ.get("SCHEMATHESIS_WORKERS", "1"),  # 1: the same order, so the same run
        "--request-timeout", "30",
        "--suppress-health-check", "too_slow",
        "--no-color",
        "--header", f"Authorization: Bearer {service.settings.admin_api_key}",
        "--report", "junit", "--report-dir", str(report),
        *extra,
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode, out.decode("utf-8", "replace")


async def test_schemathesis_finds_no_failures(fuzz_service, tmp_path):
    ids = await real_identifiers(fuzz_service.base_url)
    started = time.monotonic()
    code, output = await run_schemathesis(fuzz_service, tmp_path, ids)
    elapsed = time.monotonic() - started
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis.txt").write_text(output)
    summary = output[output.find("SUMMARY"):] if "SUMMARY" in output else output[-3000:]
    print(summary)
    tested = re.search(r"Tested: (\d+)", output)
    cases = re.search(r"(\d+) generated", output)
    print(f"schemathesis: {tested and tested.group(1)} operations, {cases and cases.group(1)} test cases, "
          f"{elapsed:.0f} s")
    assert code == 0, f"schemathesis failed (exit {code}); full output in test-artifacts/schemathesis.txt\n{output[-20000:]}"
    assert tested and int(tested.group(1)) >= 40, summary
    assert cases and f"{cases.group(1)} generated, {cases.group(1)} passed" in output, summary


# ====================================================================== what the fuzzer found, pinned
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_service(request):
    return request.getfixturevalue("api_service" if request.param == "sqlite" else "api_service_pg")


async def test_text_the_database_cannot_store_is_refused(any_service):
    """NUL (PostgreSQL cannot store it) and lone surrogates (no driver can encode them): 422, not 500."""
    async with httpx.AsyncClient(base_url=any_service.base_url, timeout=30) as c:
        cases = [
            c.get("/contracts", params={"owner": "a\x00b"}),
            c.get("/users/a%00b"),
            c.post("/users", content=b'{"id": "nul.user", "name": "x\\u0000", "email": "n@example.com"}',
                   headers={"content-type": "application/json"}),
            c.post("/webhooks", content=b'{"url": "http://127.0.0.1:9/x", "description": "\\ud800"}',
                   headers={"content-type": "application/json"}),
            c.post("/integrations/finance/payments", content=b'{"lines": [{"line_id": "L\\u0000", "amount": "1.00", '
                   b'"currency": "CNY", "received_at": "2026-11-27T10:00:00Z"}]}',
                   headers={"content-type": "application/json"}),
        ]
        for r in await asyncio.gather(*cases):
            assert r.status_code == 422, (r.request.url, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert "NUL" in r.json()["detail"]
        assert (await c.get("/users/nul.user")).status_code == 404
        # An escaped backslash before "u0000" is ordinary text.
        r = await c.post("/webhooks", content=b'{"url": "http://127.0.0.1:9/x", "description": "C:\\\\u0000"}',
                         headers={"content-type": "application/json"})
        assert r.status_code == 201 and r.json()["description"] == "C:\\u0000", r.text


async def test_json_types_are_read_as_declared(api_service):
    """0/1 are not booleans, "5" is not an integer (5.0 is), a number is not a date-time; an empty external_id
    is refused (it used to pass the duplicate check and then break the unique index: a 500)."""
    now = datetime.now(timezone.utc)
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        r = await c.post("/contracts", json=contract_request(now))
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        refused = [
            (f"/contracts/{cid}/milestones/order_review/progress", {"percent": "50"}),
            (f"/contracts/{cid}/milestones/order_review/progress", {"percent": True}),
            (f"/contracts/{cid}/payments", {"reference": "B-0", "amount": "1.00", "currency": "CNY", "received_at": 0}),
            (f"/contracts/{cid}/payments", {"reference": "B-0", "amount": "1.00", "currency": "CNY",
                                            "received_at": "1700000000"}),
            ("/integrations/erp/progress", {"lines": [{"erp_order_no": "X", "milestone": "shipping", "percent": 1,
                                                       "complete": 0}]}),
            ("/users", {"id": "types.user", "name": "T", "email": "t@example.com", "active": 1}),
            ("/contracts", contract_request(now, external_id="")),
        ]
        for path, body in refused:
            r = await c.post(path, json=body)
            assert r.status_code == 422, (path, body, r.text)
        r = await c.post(f"/contracts/{cid}/milestones/order_review/progress", json={"percent": 50.0})
        assert r.status_code == 200, r.text
        r = await c.get(f"/contracts/{cid}/events", params={"after_seq": 2**64})
        assert r.status_code == 422, r.text
