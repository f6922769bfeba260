"""The production topology (docker-compose.yml + Dockerfile) is wired to the code it runs.

No Docker here: the compose file is read as YAML and every reference in it is checked against
the thing it refers to (settings fields, modules, search attributes, other services, ports).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from core.settings import Settings
from tests.conftest import SEARCH_ATTRIBUTES
from workflows import search_attributes as sa

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

EXPECTED_SERVICES = {
    "postgres",
    "temporal",
    "temporal-search-attributes",
    "temporal-ui",
    "migrate",
    "api",
    "worker",
}
APP_SERVICES = ("migrate", "api", "worker")


# ------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def services() -> dict:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return compose["services"]


def interpolate(value) -> str:
    """What compose makes of a value with no variables set: ${X:-default} -> default, $$ -> $."""
    text = str(value)
    text = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: os.environ.get(m[1], m[2] or ""), text)
    return text.replace("$$", "$")


def env(service: dict) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(v) for k, v in raw.items()}


def command(service: dict) -> list[str]:
    raw = service.get("command") or []
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def depends_on(service: dict) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def published_ports(service: dict) -> dict[int, int]:
    """host port -> container port (a host range "8000-8009:8000" gives one entry per host port)."""
    result: dict[int, int] = {}
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            result[int(port["published"])] = int(port["target"])
        else:
            parts = interpolate(port).split("/")[0].split(":")
            first, _, last = parts[-2].partition("-")
            for host in range(int(first), int(last or first) + 1):
                result[host] = int(parts[-1])
    return result


def replicas(service: dict) -> int:
    return int(interpolate((service.get("deploy") or {}).get("replicas", 1)))


def dockerfile_cmd() -> list[str]:
    for line in reversed(DOCKERFILE.read_text(encoding="utf-8").splitlines()):
        if line.strip().upper().startswith("CMD"):
            return yaml.safe_load(line.strip()[3:].strip())  # exec form is a JSON array
    raise AssertionError("Dockerfile has no CMD")


def host_and_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


# ------------------------------------------------------------------ services and dependencies
def test_every_service_of_the_topology_exists(services):
    assert set(services) >= EXPECTED_SERVICES, f"missing: {EXPECTED_SERVICES - set(services)}"


def test_every_depends_on_target_exists(services):
    for name, service in services.items():
        for target in depends_on(service):
            assert target in services, f"{name} depends on unknown service {target!r}"


def test_api_and_worker_start_after_migrations_and_search_attributes(services):
    for name in ("api", "worker"):
        deps = depends_on(services[name])
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("temporal-search-attributes") == "service_completed_successfully", name
        assert "temporal" in deps, name
    assert depends_on(services["migrate"]).get("postgres") == "service_healthy"
    assert depends_on(services["temporal"]).get("postgres") == "service_healthy"


# ------------------------------------------------------------------ app environment
def test_app_env_names_are_settings_fields(services):
    fields = {name.upper() for name in Settings.model_fields}
    for name in APP_SERVICES:
        names = set(env(services[name]))
        assert names, f"{name} has no environment"
        assert names <= fields, f"{name} sets unknown settings {names - fields}"
        assert {"DATABASE_URL", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TASK_QUEUE"} <= names, name


def test_database_url_is_psycopg2_on_the_postgres_service(services):
    pg_env = env(services["postgres"])
    for name in APP_SERVICES:
        url = make_url(env(services[name])["DATABASE_URL"])
        assert url.drivername == "postgresql+psycopg2", name
        assert url.host == "postgres" and url.host in services, name
        assert (url.port or 5432) == 5432, name
        assert url.database == pg_env["POSTGRES_DB"], name
        assert url.username == pg_env["POSTGRES_USER"], name
        assert url.password == pg_env["POSTGRES_PASSWORD"], name


def test_temporal_address_points_at_the_temporal_service(services):
    for name in ("api", "worker"):
        host, port = host_and_port(env(services[name])["TEMPORAL_ADDRESS"])
        assert host == "temporal" and host in services, name
        assert port == 7233, name
    assert 7233 in published_ports(services["temporal"]).values()


# ------------------------------------------------------------------ what the app containers run
def test_worker_runs_worker_py(services):
    cmd = command(services["worker"])
    assert cmd[:2] == ["python", "worker.py"]
    assert (ROOT / "worker.py").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "worker" in pyproject["tool"]["setuptools"]["py-modules"], "worker.py is not installed"


def test_api_runs_api_main_app(services):
    for cmd in (command(services["api"]) or dockerfile_cmd(), dockerfile_cmd()):
        assert cmd[0] == "uvicorn"
        assert "api.main:app" in cmd
        assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
        assert cmd[cmd.index("--port") + 1] == "8000"
    spec = importlib.util.find_spec("api.main")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve() == ROOT / "api" / "main.py"
    assert re.search(r"^app\s*[:=]", Path(spec.origin).read_text(encoding="utf-8"), re.M), "api/main.py defines no app"


def test_api_healthcheck_uses_readyz(services):
    check = " ".join(str(part) for part in services["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/readyz" in check
    assert '"/readyz"' in (ROOT / "api" / "platform" / "meta.py").read_text(encoding="utf-8")


def test_migrate_runs_alembic_upgrade_head(services):
    assert command(services["migrate"]) == ["alembic", "upgrade", "head"]
    assert (ROOT / "alembic.ini").is_file()
    assert services["migrate"].get("restart", "no") == "no"


def test_api_and_workers_are_scaled_out_without_port_clashes(services):
    assert replicas(services["worker"]) >= 2 and replicas(services["api"]) >= 2
    for name, service in services.items():
        ports = published_ports(service)
        if replicas(service) > 1 and ports:
            # Each replica needs its own host port: a range at least as wide as the replica count.
            assert len(ports) >= replicas(service), f"{name} has {replicas(service)} replicas, ports {sorted(ports)}"


def test_temporal_history_shards_are_sized(services):
    assert int(env(services["temporal"])["NUM_HISTORY_SHARDS"]) >= 4


# ------------------------------------------------------------------ Temporal
def test_search_attribute_registration_equals_source(services):
    service = services["temporal-search-attributes"]
    assert service["image"].startswith("temporalio/admin-tools")
    script = interpolate(" ".join(service.get("entrypoint") or []) + "\n" + "\n".join(command(service)))
    creates = [line for line in script.splitlines() if "search-attribute create" in line]
    registered = []
    for line in creates:
        args = shlex.split(line.split("||")[0])
        assert args[:4] == ["temporal", "operator", "search-attribute", "create"], line
        assert args[args.index("--namespace") + 1] == env(services["worker"])["TEMPORAL_NAMESPACE"], line
        assert args[args.index("--address") + 1] == "temporal:7233", line
        registered.append((args[args.index("--name") + 1], args[args.index("--type") + 1]))
    expected = [(key.name, sa.CLI_TYPES[key.indexed_value_type.name]) for key in SEARCH_ATTRIBUTES]
    assert sorted(registered) == sorted(expected)


def test_temporal_database_is_the_postgres_service(services):
    temporal = env(services["temporal"])
    pg_env = env(services["postgres"])
    assert services["temporal"]["image"].startswith("temporalio/auto-setup")
    assert temporal["DB"] == "postgres12"
    assert temporal["DB_PORT"] == "5432"
    assert temporal["POSTGRES_SEEDS"] == "postgres" and "postgres" in services
    assert temporal["POSTGRES_USER"] == pg_env["POSTGRES_USER"]
    assert temporal["POSTGRES_PWD"] == pg_env["POSTGRES_PASSWORD"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_temporal_ui_points_at_temporal(services):
    ui = services["temporal-ui"]
    assert ui["image"].startswith("temporalio/ui")
    assert env(ui)["TEMPORAL_ADDRESS"] == "temporal:7233"


def test_published_ports(services):
    assert published_ports(services["api"])[8000] == 8000
    assert published_ports(services["temporal"]) == {7233: 7233}
    assert published_ports(services["temporal-ui"]) == {8233: 8080}
    hosts = [port for service in services.values() for port in published_ports(service)]
    assert len(hosts) == len(set(hosts)), f"a host port is published twice: {hosts}"


def test_ui_url_for_people_is_the_published_ui_port(services):
    url = urlsplit(env(services["api"])["TEMPORAL_UI_URL"])
    assert url.port in published_ports(services["temporal-ui"])


# ------------------------------------------------------------------ the image
def test_production_settings_and_shared_documents(services):
    """The app runs as production (no dev credentials: core/settings.py refuses them), with the
    secrets required from the environment, and every API replica shares the documents volume."""
    import yaml as _yaml

    compose = _yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    for name in ("api", "worker"):
        raw = services[name]["environment"]
        assert raw["ENVIRONMENT"] == "production", name
        assert raw["JWT_SECRET"].startswith("${JWT_SECRET:?"), name  # compose refuses to start without it
        assert "SEED_DEMO_ORG" not in raw and "SEED_DEMO_DATA" not in raw, name
    assert "documents:/data/documents" in services["api"]["volumes"]
    assert services["api"]["environment"]["DOCUMENT_DIR"] == "/data/documents"
    assert "documents" in compose["volumes"]


def test_dockerfile_installs_the_project():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^COPY \. \.", text, re.M)
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", text)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", "data", ".git", "test-artifacts"} <= set(ignored)
    assert "pyproject.toml" not in ignored and "worker.py" not in ignored


def test_app_services_build_from_the_dockerfile(services):
    for name in APP_SERVICES:
        build = services[name]["build"]
        if isinstance(build, str):
            build = {"context": build}
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE, name
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1, f"api, worker and migrate must run one image: {images}"


def test_the_image_ships_compiled_bytecode():
    """PYTHONDONTWRITEBYTECODE keeps processes from writing .pyc files; without a compile step in the
    image every worker compiled workflows/ from source for each new workflow instance (finding 1 of
    docs/benchmarks.md).  The image compiles the project once, after installing it."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    runs = [line for line in text.replace("\\\n", " ").splitlines() if line.strip().upper().startswith("RUN")]
    compile_steps = [r for r in runs if "compileall" in r and "/app" in r]
    assert compile_steps, "the Dockerfile must run `python -m compileall /app`"
    assert text.index("COPY . .") < text.index("compileall"), "compile after the source is copied in"
