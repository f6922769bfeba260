"""Playbooks: the standard execution processes, kept as data (``core/playbooks/*.yaml``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

PLAYBOOK_DIR = Path(__file__).parent / "playbooks"


@lru_cache
def load_playbooks() -> dict[str, dict[str, Any]]:
    books: dict[str, dict[str, Any]] = {}
    for path in sorted(PLAYBOOK_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        books[data["name"]] = data
    return books


def get_playbook(name: str) -> dict[str, Any] | None:
    return load_playbooks().get(name)
