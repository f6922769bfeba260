"""The README's one command (`python3 run.py` -> `python -m core.dev`): it starts the whole service,
and Ctrl-C stops it cleanly.

Ctrl-C is SIGINT to the terminal's foreground process group, so that is what this test sends.
Before, every child was in that group: the Temporal dev server went away under the worker (a
dozen "Failed to poll for task" warnings from its own system workers) and uvicorn, signalled
twice, printed a KeyboardInterrupt traceback.  Now the launcher alone hears it and stops its
children one by one, the Temporal server last.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the parent pid
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _launch(tmp_path: Path, **extra_env: str) -> tuple[subprocess.Popen, Path, str]:
    """``python -m core.dev`` on free ports, its output in a file, and its API port; only PATH
    and HOME of this environment (no DATABASE_URL or other settings of the test run)."""
    ports = [str(free_port()) for _ in range(4)]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(tmp_path)),
           "SEED_DEMO_DATA": "0", "PYTHONUNBUFFERED": "1", **extra_env}
    out_path = tmp_path / "dev.log"
    with open(out_path, "wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "core.dev", "--data-dir", str(tmp_path / "data"), "--temporal-port", ports[0],
             "--ui-port", ports[1], "--api-port", ports[2], "--smtp-port", ports[3]],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, as a shell gives a foreground job
        )
    return launcher, out_path, ports[2]


@pytest.mark.timeout(300)
def test_the_one_command_starts_the_service_and_ctrl_c_stops_it_cleanly(tmp_path):
    launcher, out_path, api_port = _launch(tmp_path)
    try:
        deadline = time.monotonic() + 180
        while "Contract tracking is running" not in out_path.read_text(errors="replace"):
            assert launcher.poll() is None, out_path.read_text(errors="replace")
            assert time.monotonic() < deadline, out_path.read_text(errors="replace")
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=30).status_code == 200
        # The banner's doctor line checks this stack (its ports, its data directory), not the
        # CLI's defaults: before, `contracts doctor` had no options and, on other ports, checked
        # localhost:7233 and ./data/contracts.db.
        line = next(x for x in out_path.read_text(errors="replace").splitlines() if "Check it all:" in x)
        command = shlex.split(line.split("Check it all:", 1)[1])
        assert f"127.0.0.1:{api_port}" in " ".join(command) and str(tmp_path / "data") in " ".join(command), line
        doctor = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(tmp_path)),
                                     "COLUMNS": "200", "NO_COLOR": "1"})
        assert doctor.returncode == 0 and "All checks passed" in doctor.stdout, doctor.stdout + doctor.stderr
        # The banner's admin API key works as it says.
        line = next(x for x in out_path.read_text(errors="replace").splitlines() if "Admin API key" in x)
        key_file = line.split("$(cat ", 1)[1].rstrip(")")
        key = Path(key_file).read_text().strip()
        assert httpx.get(f"http://127.0.0.1:{api_port}/contracts", headers={"X-API-Key": key}, timeout=30).status_code == 200
        children = _children(launcher.pid)
        assert len(children) == 4, children  # Temporal, the mail catcher, the worker, the API
        started = len(out_path.read_text(errors="replace"))

        os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C in the terminal
        assert launcher.wait(90) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    log = out_path.read_text(errors="replace")
    assert not [pid for pid in children if _alive(pid)], "a child outlived the launcher"
    after = log[started:]
    assert "Traceback" not in after and "KeyboardInterrupt" not in after, after
    assert "level=WARN" not in after and "level=ERROR" not in after, after


@pytest.mark.timeout(300)
def test_a_failed_start_leaves_no_process_behind(tmp_path):
    # The Temporal server is up before the schema step, which cannot reach this database.
    launcher, out_path, _ = _launch(tmp_path, DATABASE_URL="postgresql+psycopg2://postgres@127.0.0.1:1/nowhere")
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while launcher.poll() is None:
            children.update(_children(launcher.pid))
            assert time.monotonic() < deadline, out_path.read_text(errors="replace")
            time.sleep(0.1)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    log = out_path.read_text(errors="replace")
    assert launcher.returncode != 0, log
    assert "database schema at" in log, log  # it got as far as the database
    assert children, "the Temporal server never started"
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)], f"left behind: {children}\n{log}"


@pytest.mark.timeout(120)
def test_a_port_already_taken_stops_the_start_before_anything_runs(tmp_path):
    # A second `python3 run.py` while the first still runs: before, the new Temporal server failed
    # to bind, the readiness check reached the old one, and the banner said "running".
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(tmp_path)), "SEED_DEMO_DATA": "0"}
        done = subprocess.run(
            [sys.executable, "-m", "core.dev", "--data-dir", str(tmp_path / "data"), "--temporal-port", str(port),
             "--ui-port", str(free_port()), "--api-port", str(free_port()), "--smtp-port", str(free_port())],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert done.returncode != 0, done.stdout
    assert f"--temporal-port {port}" in done.stderr, done.stderr
    assert "--api-port" not in done.stderr.split("(")[0], done.stderr  # only the taken one is named
    assert "Temporal dev server" not in done.stdout and "running" not in done.stdout, done.stdout
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


def test_the_banner_tells_the_credentials_in_force(tmp_path):
    """Set in the environment, a credential is the one in force, and the banner says so: it
    pointed at the data directory's key file (written anyway) while the API took the key set."""
    from core.dev import dev_credentials

    made, (login, key_line) = dev_credentials({}, tmp_path)
    assert made["ADMIN_API_KEY"] == (tmp_path / "dev-admin-key").read_text().strip()
    assert f"$(cat {tmp_path / 'dev-admin-key'})" in key_line and "admin / admin" in login
    assert dev_credentials({}, tmp_path)[0] == made  # kept: the same after a restart

    other = tmp_path / "other"
    other.mkdir()
    given, (login, key_line) = dev_credentials({"ADMIN_API_KEY": "mine", "ADMIN_PASSWORD": "pw", "JWT_SECRET": "s"},
                                               other)
    assert "ADMIN_API_KEY" not in given and "JWT_SECRET" not in given and given["ADMIN_PASSWORD"] == "pw"
    assert "the ADMIN_API_KEY you set" in key_line and "dev-admin-key" not in key_line
    assert "the ADMIN_PASSWORD you set" in login and "admin / admin" not in login
    assert not list(other.iterdir())  # no key file that nothing uses
    assert "none" in dev_credentials({"ADMIN_API_KEY": ""}, other)[1][1]


async def test_demo_data_seeding_logs_in_as_admin_when_there_is_no_admin_key(api_service):
    """With ``ADMIN_API_KEY=""`` the launcher's demo-data seeder called the API with the empty key:
    every live demo contract was refused (401) and the dashboard came up without them."""
    import asyncio

    from core.dev import seed_credentials

    with_key = await asyncio.to_thread(seed_credentials, api_service.url, api_service.settings.admin_api_key, "unused")
    by_login = await asyncio.to_thread(seed_credentials, api_service.url, "", "admin")
    assert by_login["Authorization"] != with_key["Authorization"]
    async with httpx.AsyncClient(base_url=api_service.url, timeout=30) as c:
        for headers in (with_key, by_login):
            assert (await c.get("/contracts", params={"limit": 1}, headers=headers)).status_code == 200
    empty_key = api_service.url.replace("http://", "http://apikey:@", 1)  # what the seeder called before
    async with httpx.AsyncClient(base_url=empty_key, timeout=30) as c:
        assert (await c.get("/contracts", params={"limit": 1})).status_code == 401
    with pytest.raises(httpx.HTTPStatusError):  # a wrong password says so, rather than seeding nothing silently
        await asyncio.to_thread(seed_credentials, api_service.url, "", "not-the-password")
