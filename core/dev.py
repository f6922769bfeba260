"""The embedded default, all in one: Temporal dev server (SQLite, Web UI), worker and API.

    python3 run.py             # or, inside the venv: python -m core.dev

Data lives in ./data (the Temporal history in temporal.db, the contract repository in
contracts.db), so a restart carries on where it stopped.  Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from core.migrate import upgrade
from core.settings import Settings
from core.temporal import find_binary
from workflows.search_attributes import cli_flags

ROOT = Path(__file__).resolve().parent.parent


def temporal_command(db_file: Path, port: int, ui_port: int, namespace: str) -> list[str]:
    return [
        find_binary("temporal"),
        "server",
        "start-dev",
        "--db-filename", str(db_file),
        "--port", str(port),
        "--ui-port", str(ui_port),
        "--namespace", namespace,
        # Errors only: even stopped on its own (SIGTERM, nothing connected), the server's system
        # workers log half a dozen "Failed to poll for task" warnings on the way out.
        "--log-level", "error",
        # Measured here: WAL and relaxed sync make the dev server start and run ~2.5x faster.
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
        *cli_flags(),
    ]


def _program(proc: subprocess.Popen) -> str:
    """The program a process runs, for messages (started with an argument list)."""
    args = proc.args
    return str(args[0] if isinstance(args, (list, tuple)) else args)


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{_program(proc)} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


def busy_ports(wanted: list[tuple[str, str, int]]) -> list[tuple[str, int]]:
    """The (option, port) of each wanted (option, host, port) that something already listens on.
    Checked before anything starts: with another stack still running on the default ports, the
    new Temporal server and API failed to bind, but the readiness checks reached the *old* ones,
    so the launcher printed "running" for a stack that was not its own, then stopped."""
    busy: list[tuple[str, int]] = []
    for option, host, port in wanted:
        try:  # the host's own address family (``--host ::`` is IPv6)
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except OSError:
            continue  # a host that does not resolve: the server it is for says so when it starts
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As the servers bind: a port in TIME_WAIT after a restart is free, a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError:
                busy.append((option, port))
    return busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--temporal-port", type=int, default=7233)
    parser.add_argument("--ui-port", type=int, default=8233)
    parser.add_argument("--api-port", type=int, default=8000)
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    busy = busy_ports([("--temporal-port", "127.0.0.1", args.temporal_port), ("--ui-port", "127.0.0.1", args.ui_port),
                       ("--api-port", args.host, args.api_port), ("--smtp-port", "127.0.0.1", args.smtp_port)])
    if busy:
        sys.exit(f"Not started: something already listens on {', '.join(f'{o} {p}' for o, p in busy)} (another "
                 f"`python3 run.py` still running?).  Stop it, or give this one other ports, e.g. `python3 run.py dev "
                 f"{' '.join(f'{o} {p + 10}' for o, p in busy)}`.")

    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": os.environ.get("DATABASE_URL", f"sqlite:///{data / 'contracts.db'}"),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{args.temporal_port}",
        "TEMPORAL_UI_URL": f"http://{args.host if args.host != '0.0.0.0' else 'localhost'}:{args.ui_port}",
        "PYTHONUNBUFFERED": "1",
    }
    credentials, (login_line, key_line) = dev_credentials(os.environ, data)
    env.update(credentials)
    env.setdefault("DOCUMENT_DIR", str(data / "documents"))
    settings = Settings(database_url=env["DATABASE_URL"], temporal_address=env["TEMPORAL_ADDRESS"])

    procs: list[subprocess.Popen] = []

    # The children run in their own sessions: a Ctrl-C (SIGINT to the terminal's whole process
    # group) reaches only this launcher, which stops them one by one in reverse order of start:
    # the API, the worker, the mail catcher, and the Temporal server last, once the worker is done
    # with it.  When Ctrl-C reached every process at once, uvicorn got a second SIGINT from here
    # while shutting down (a KeyboardInterrupt traceback) and the server's own workers logged a
    # dozen warnings as it went away under them.
    stopping: list[bool] = []

    def stop(*_):
        if stopping:  # a second Ctrl-C while stopping: no more waiting
            for p in procs:
                if p.poll() is None:
                    p.kill()
            sys.exit(1)
        stopping.append(True)
        _stop_in_order(procs)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if hasattr(signal, "SIGHUP"):  # POSIX: the terminal closed; children in their own sessions would not hear it
        signal.signal(signal.SIGHUP, stop)

    try:
        print(f"· Temporal dev server (history in {data / 'temporal.db'}) ...", flush=True)
        temporal = subprocess.Popen(
            temporal_command(data / "temporal.db", args.temporal_port, args.ui_port, settings.temporal_namespace),
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        procs.append(temporal)
        wait_for_port("127.0.0.1", args.temporal_port, 60, temporal)

        print(f"· database schema at {env['DATABASE_URL']} ...", flush=True)
        upgrade(env["DATABASE_URL"])

        # A local mail catcher so reminders and escalations have somewhere to go in dev mode.
        print(f"· mail catcher on 127.0.0.1:{args.smtp_port} (messages in {data / 'mail.log'}) ...", flush=True)
        mail_log = open(data / "mail.log", "a", encoding="utf-8")  # noqa: SIM115 - the catcher's stdout while dev runs
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Debugging", "-l", f"127.0.0.1:{args.smtp_port}"],
            stdout=mail_log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        ))
        env["SMTP_HOST"], env["SMTP_PORT"] = "127.0.0.1", str(args.smtp_port)

        print("· worker ...", flush=True)
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT, start_new_session=True))
        print("· API ...", flush=True)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "api.main:app", "--host", args.host, "--port", str(args.api_port),
                 "--log-level", "warning"],
                env={**env, "SEED_DEMO_ORG": os.environ.get("SEED_DEMO_ORG", "1")},  # the demo org
                cwd=ROOT,
                start_new_session=True,
            )
        )
        wait_for_port("127.0.0.1", args.api_port, 60, procs[-1])

        # Demo data for the dashboard, once (idempotent), beside the running stack: SEED_DEMO_DATA=0 skips it.
        if Settings.model_validate({"seed_demo_data": os.environ.get("SEED_DEMO_DATA", "1")}).seed_demo_data:
            threading.Thread(target=_seed_demo_data,
                             args=(env["DATABASE_URL"], f"http://127.0.0.1:{args.api_port}", env["ADMIN_API_KEY"],
                                   env["ADMIN_PASSWORD"] or "admin"),
                             daemon=True).start()

        print(
            f"""
    Contract tracking is running (Ctrl-C stops it all):
      Dashboard        http://{args.host if args.host != '0.0.0.0' else 'localhost'}:{args.api_port}/ui/
      API              http://{args.host}:{args.api_port}        (OpenAPI docs: /docs, health: /readyz)
      Temporal UI      http://{args.host}:{args.ui_port}        (search: ContractStatus="active", OverdueCount > 0)
      Temporal gRPC    127.0.0.1:{args.temporal_port}         (temporal workflow list --query "ContractStatus='active'")
      Database         {env['DATABASE_URL']}
    {login_line}
      TOKEN=$(curl -s -d username=li.wei -d password=demo localhost:{args.api_port}/auth/token \\
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
      curl -s -X POST localhost:{args.api_port}/contracts -H "Authorization: Bearer $TOKEN" \\
        -H 'content-type: application/json' -d @examples/goods_sale.json
      {key_line}
    Check it all: {_doctor_command(args, env)}
    """,
            flush=True,
        )
        while True:
            for p in procs:
                if p.poll() is not None:
                    print(f"{_program(p)} stopped with exit code {p.returncode}; stopping the rest", flush=True)
                    stop()
            time.sleep(1)
    finally:
        # However the launcher ends (a start-up failure such as an unreachable DATABASE_URL, a crash),
        # its children must not outlive it: in their own sessions nothing else would stop them.
        _stop_in_order(procs)


def _stop_in_order(procs: list[subprocess.Popen]) -> None:
    """Stop the children one by one, last started first (the Temporal server, started first, last:
    SIGTERM; the others SIGINT, as a terminal's Ctrl-C); one that does not stop in 10 s is killed."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGINT if p is not procs[0] else signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def _doctor_command(args: argparse.Namespace, env: dict[str, str]) -> str:
    """``contracts doctor`` aimed at this stack: the CLI's defaults are the default ports and ./data,
    so anything else is spelled out (else the doctor checked a server that was not this one)."""
    from core.cli import DEFAULT_API

    words = [os.path.relpath(Path(sys.executable).parent / "contracts", Path.cwd())]
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    if f"http://{host}:{args.api_port}" != DEFAULT_API:
        words += ["--api", f"http://{host}:{args.api_port}"]
    words.append("doctor")
    if args.temporal_port != 7233:
        words += ["--temporal-address", env["TEMPORAL_ADDRESS"]]
    if env.get("TASK_QUEUE"):
        words += ["--task-queue", env["TASK_QUEUE"]]
    # Against the built-in default, not this shell's DATABASE_URL: the doctor may run in another shell.
    if env["DATABASE_URL"] != Settings.model_fields["database_url"].default:
        words += ["--database-url", env["DATABASE_URL"]]
    return shlex.join(words)


def dev_credentials(environ: Mapping[str, str], data: Path) -> tuple[dict[str, str], tuple[str, str]]:
    """The dev credentials the stack runs with, and the banner's two lines that tell them.  What
    the environment sets wins, and the banner says so (it pointed at the data directory's key file
    while the key in force was the one set: a new user following it got a 401).  Otherwise they
    are made once and kept in the data directory, so they survive a restart: a bootstrap admin API
    key and the token-signing secret; "admin" logs in with "admin"."""
    env: dict[str, str] = {}
    password = environ.get("ADMIN_PASSWORD")
    env["ADMIN_PASSWORD"] = "admin" if password is None else password
    admin = "admin / admin" if password is None else "admin / the ADMIN_PASSWORD you set"
    login_line = f"Log in (dashboard or API): {admin}, or a demo person (li.wei, zhang.min, sun.li, liu.yang...) / demo"
    key = environ.get("ADMIN_API_KEY")
    if key is None:
        path = data / "dev-admin-key"
        env["ADMIN_API_KEY"] = _dev_secret(path, "dev-admin-")
        key_line = f"Admin API key (dev only, in {path}): export CONTRACTS_TOKEN=$(cat {path})"
    elif key:
        key_line = 'Admin API key: the ADMIN_API_KEY you set: export CONTRACTS_TOKEN="$ADMIN_API_KEY"'
    else:
        key_line = "Admin API key: none (ADMIN_API_KEY is empty): log in as admin instead"
    if environ.get("JWT_SECRET") is None:
        env["JWT_SECRET"] = _dev_secret(data / "dev-jwt-secret", "")
    return env, (login_line, key_line)


def _dev_secret(path: Path, prefix: str) -> str:
    import secrets

    if path.exists():
        return path.read_text().strip()
    value = prefix + secrets.token_urlsafe(32)
    path.write_text(value)
    path.chmod(0o600)
    return value


def seed_credentials(api: str, admin_key: str, admin_password: str) -> dict[str, str]:
    """The Authorization header the demo-data seeder calls the API with: the bootstrap admin key when
    there is one, else a token from logging in as admin (with ``ADMIN_API_KEY=""`` the seeder sent the
    empty key and every live demo contract was refused with a 401)."""
    import httpx

    if admin_key:
        return {"Authorization": f"Bearer {admin_key}"}
    r = httpx.post(f"{api}/auth/token", data={"username": "admin", "password": admin_password}, timeout=30)
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _seed_demo_data(database_url: str, api: str, admin_key: str, admin_password: str) -> None:
    from core.demo_data import seed_demo_data
    from models.db import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        history, live = seed_demo_data(make_session_factory(engine), api,
                                       headers=seed_credentials(api, admin_key, admin_password))
        if history or live:
            print(f"· demo data: {history} past contracts, {live} live contracts (SEED_DEMO_DATA=0 to skip)", flush=True)
    except Exception as exc:  # noqa: BLE001 - demo data is a convenience: say why and carry on
        print(f"· demo data not seeded: {exc.__class__.__name__}: {exc}", flush=True)
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
