#!/usr/bin/env python3
"""One command for a fresh machine with only Python 3.11+.

    python3 run.py          # create .venv, install, start Temporal (+UI), worker and API
    python3 run.py test     # create .venv, install, run the whole test suite
    python3 run.py bench    # ... or any `contracts` CLI command: python3 run.py contracts doctor

Only the standard library is used here: this file exists to make the virtualenv.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".installed"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - run.py runs on whatever python3 the machine has
        sys.exit(f"Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating virtualenv in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != digest:
        print("installing the project and its dependencies (first run takes a minute)", flush=True)
        subprocess.check_call([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], cwd=ROOT)
        subprocess.check_call([str(PY), "-m", "pip", "install", "-q", "-e", ".[test]"], cwd=ROOT)
        STAMP.write_text(digest)


def main() -> int:
    ensure_venv()
    args = sys.argv[1:]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not args or args[0] == "dev":
        cmd = [str(PY), "-m", "core.dev", *args[1:]]
    elif args[0] == "test":
        cmd = [str(PY), "-m", "pytest", *args[1:]]
    elif args[0] == "contracts":
        cmd = [str(VENV / "bin" / "contracts"), *args[1:]]
    else:
        cmd = [str(PY), *args]
    os.chdir(ROOT)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    sys.exit(main())
