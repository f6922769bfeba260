"""A success must stay a success: the Temporal bridge can abort while Python finalises
(sdk-python issue 300, "PyGILState_Release ... finalizing"), so the worker and the CLI leave
through ``core.temporal.hard_exit`` and pytest through ``pytest_unconfigure``.  Each is run as a
real process here, several times (the abort is intermittent), and must exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CONTRACTS_NO_HARD_EXIT",)}
    env.update(extra)
    return env


@pytest.mark.devserver
def test_the_worker_exits_0_on_sigterm(dev_env, tmp_path):
    target = dev_env.client.service_client.config.target_host
    codes = []
    for n in range(ROUNDS):
        log = tmp_path / f"worker-{n}.log"
        proc = subprocess.Popen(
            [sys.executable, "worker.py"], cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env=_env(DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}", TEMPORAL_ADDRESS=target,
                     TASK_QUEUE=f"exit-{n}"),
        )
        deadline = time.monotonic() + 30
        while b"worker polling" not in log.read_bytes() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        codes.append(proc.wait(timeout=30))
    assert codes == [0] * ROUNDS, codes


def test_the_cli_exits_0_and_a_failure_stays_non_zero(tmp_path):
    ok = [subprocess.run([sys.executable, "-m", "core.cli", "--help"], cwd=ROOT, env=_env(),
                         capture_output=True, timeout=60).returncode for _ in range(ROUNDS)]
    assert ok == [0] * ROUNDS
    # doctor against an API that is not there: a real failure must not turn into a 0 either.
    bad = subprocess.run([sys.executable, "-m", "core.cli", "--api", "http://127.0.0.1:9", "doctor"], cwd=ROOT,
                         env=_env(), capture_output=True, timeout=60)
    assert bad.returncode != 0, bad.stdout


def test_a_passing_pytest_run_with_temporal_exits_0(tmp_path):
    test = tmp_path / "test_tiny.py"
    test.write_text(
        "from temporalio.testing import WorkflowEnvironment\n"
        "from core.temporal import find_binary\n"
        "async def test_env():\n"
        "    env = await WorkflowEnvironment.start_time_skipping(\n"
        "        test_server_existing_path=find_binary('temporal-test-server'))\n"
        "    await env.shutdown()\n"
    )
    codes = [subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test),
                             "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml")],
                            cwd=ROOT, env=_env(), capture_output=True, timeout=120).returncode
             for _ in range(ROUNDS)]
    assert codes == [0] * ROUNDS, codes
