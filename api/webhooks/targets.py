"""Webhook URLs given to the API (subscriptions, departments' endpoints) must reach public
addresses: checked at registration here, and again at every delivery (core/channels/webhook.py)."""

from __future__ import annotations

import socket

from api.platform.problems import Problem
from core.channels.webhook import TargetRefused, check_target
from core.settings import Settings


def require_public_target(url: str | None, settings: Settings, field: str = "url") -> None:
    """422 if ``url``'s host is, or resolves to, an address webhooks may not go to.  A name that
    does not resolve now is accepted: delivery resolves it again (and refuses it then if need be)."""
    if url is None:
        return
    try:
        check_target(url, allow_private=settings.webhook_allow_private_targets)
    except TargetRefused as exc:
        raise Problem(422, f"{field}: {exc}", slug="validation", errors=[{"field": field, "message": str(exc)}]) from exc
    except (socket.gaierror, UnicodeError, ValueError):
        pass  # not resolvable now (or not a name the resolver takes): judged again at delivery
