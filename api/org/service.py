"""People and departments: the service the organisation's routes call.  The rules live in
``core.org``; this turns its errors (NotFound, Conflict, Invalid) into 404, 409 and 422 problems."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.platform.problems import Problem
from core import org

_STATUS = {org.NotFound: 404, org.Conflict: 409, org.Invalid: 422}


class OrgStore:
    """One transaction per call, with the repository's errors turned into problem details."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        try:
            with self.sessions.begin() as session:
                yield session
        except org.OrgError as exc:
            code = next(c for cls, c in _STATUS.items() if isinstance(exc, cls))
            errors = [{"field": exc.field, "message": str(exc)}] if exc.field else None
            raise Problem(code, str(exc), slug=exc.slug, errors=errors) from exc
        except IntegrityError:
            # The checks above ran first; this is a concurrent writer that got there before us.
            raise Problem(409, "the record changed concurrently (duplicate key or reference); retry", slug="conflict") from None


async def get_org_store(request: Request) -> OrgStore:
    return OrgStore(request.app.state.sessions)


Store = Annotated[OrgStore, Depends(get_org_store)]
