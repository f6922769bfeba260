"""The ``notify`` activity: reminders, escalations and hand-offs, each sent exactly once.

Exactly once per (contract, item, due date, kind+level, recipient, channel): before sending,
the decision is recorded in ``notifications`` under that key (INSERT ... ON CONFLICT DO NOTHING).
A retry, a replay or a restarted worker finds the row: ``sent`` means skip, ``decided`` means
the earlier attempt died before sending, so send now.  Email carries the key as its Message-ID
and webhooks as their event id, so a receiver can drop the one duplicate a crash *between*
"accepted by the server" and "marked sent" could still produce.

Transient failures (SMTP 4xx, timeouts, webhook 5xx) raise, and Temporal retries with backoff;
permanent ones (bad address, 4xx) are recorded as ``failed``, not retried, and escalated to the
operator (``OPERATOR_USER``): a task in their inbox.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity

from core import org
from core.channels import PermanentDeliveryError, TransientDeliveryError
from core.settings import Settings
from models.org import Department, User
from workflows.contract.notices import outbox_key
from workflows.types import NotifyRequest

log = logging.getLogger("notify")

# Fault injection for the crash test: when this names a file that does not exist yet, the
# worker creates it and dies right after recording a decision, before sending.
FAULT_ENV = "CONTRACTS_FAULT_EXIT_AFTER_DECISION"


class NotifyActivities:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self._sessions = sessions
        self._engine = sessions.kw["bind"]  # the delivery path's writes go straight on a connection
        self._settings = settings

    @activity.defn(name="notify")
    def notify(self, r: NotifyRequest) -> dict[str, int]:
        """The escalation chain's notices (EscalationWorkflow); the contract's own go through the
        notification outbox (core/outbox.py), which calls :meth:`deliver` the same way."""
        return self.deliver(r)

    def deliver(self, r: NotifyRequest) -> dict[str, int]:
        """Send ``r`` to each recipient on each channel, once per (recipient, channel).  Raises
        ``TransientDeliveryError`` for what may succeed later; permanent failures are recorded."""
        counts = {"sent": 0, "skipped": 0, "failed": 0}
        with self._sessions() as session:
            to = self._people(session, r, r.to)
            cc = [u for u in self._people(session, r, r.cc) if u.id not in {t.id for t in to}]
            department = session.get(Department, r.department) if r.department else None
            session.expunge_all()
        for channel in r.channels:
            if channel == "webhook":
                if department is None or not department.webhook_url:
                    continue  # this department has no chat-bot / webhook endpoint
                self._deliver(r, channel, f"dept:{department.key}", "department", [], department, counts)
                continue
            for user in to:
                self._deliver(r, channel, user.id, "to", cc, user, counts)
        return counts

    # ---------------------------------------------------------------- recipients
    def _people(self, session: Session, r: NotifyRequest, roles: list[str]) -> list[User]:
        people: list[User] = []
        for role in roles:
            for user in self._resolve(session, r, role):
                if user is not None and user.active and user.id not in {p.id for p in people}:
                    people.append(user)
        return people

    def _resolve(self, session: Session, r: NotifyRequest, role: str) -> list[User | None]:
        if role == "owner":
            return [org.find_user(session, r.owner) or _unknown(r.owner)]
        if role == "manager":
            return list(org.manager_chain(session, r.owner, 1)[:1])
        if role == "manager_of_manager":
            chain = org.manager_chain(session, r.owner, 2)
            if len(chain) >= 2:
                return [chain[1]]
            return [org.department_head(session, r.department)]  # a short chain ends at the head
        if role == "department_head":
            return [org.department_head(session, r.department)]
        if role.startswith("user:"):
            return [org.find_user(session, role[5:])]
        return []

    # ---------------------------------------------------------------- one delivery
    def _deliver(self, r: NotifyRequest, channel: str, recipient: str, role: str, cc: list[User], target, counts) -> None:
        key = f"{outbox_key(r)}:{recipient}:{channel}"
        locale = getattr(target, "locale", None) or "zh"
        message = self._render(r, locale, cc, getattr(target, "name", recipient))
        with self._engine.begin() as conn:
            status = org.decide_notification(
                conn,
                key=key,
                contract_id=r.contract_id,
                item_type=r.item_type,
                item_key=r.item_key,
                level=r.level,
                kind=r.kind,
                recipient=recipient,
                role=role,
                channel=channel,
                subject=message.subject,
                body=message.text,
            )
        if status in ("sent", "failed"):
            counts["skipped"] += 1
            return
        _maybe_die_for_test()
        try:
            if channel == "email":
                email = getattr(target, "email", None)
                if not email:
                    raise PermanentDeliveryError(f"{recipient} has no email address on file")
                from core.channels.email import send_email

                send_email(
                    self._settings,
                    to=[email],
                    cc=[u.email for u in cc if u.email],
                    subject=message.subject,
                    text=message.text,
                    html=message.html,
                    message_id=key,
                    headers={"X-Contracts-Notification": key},
                )
            elif channel == "webhook":
                from core.channels.webhook import post_webhook

                post_webhook(
                    self._settings,
                    target.webhook_url,
                    target.webhook_secret or "",
                    {
                        "id": key,
                        "type": f"contract.{r.kind}",
                        "contract_id": r.contract_id,
                        "contract_title": r.contract_title,
                        "customer": r.customer,
                        "item_type": r.item_type,
                        "item_key": r.item_key,
                        "item_name": r.item_name,
                        "owner": r.owner,
                        "level": r.level,
                        "days": r.days,
                        "due_at": r.due_at.isoformat() if r.due_at else None,
                        "amount": r.amount,
                        "currency": r.currency,
                        "subject": message.subject,
                        "text": message.text,
                    },
                    event_id=key,
                )
            elif channel == "inbox":
                with self._engine.begin() as conn:
                    org.task_once(
                        conn,
                        key=key,
                        contract_id=r.contract_id,
                        milestone_key=r.item_key if r.item_type == "milestone" else None,
                        assignee=recipient,
                        title=message.subject,
                        body=message.text,
                    )
                with self._engine.begin() as conn:  # after the insert committed (see the function)
                    org.close_task_if_settled(conn, key=key, contract_id=r.contract_id, item_type=r.item_type,
                                              item_key=r.item_key)
            else:
                raise PermanentDeliveryError(f"unknown channel {channel!r}")
        except PermanentDeliveryError as exc:
            with self._sessions.begin() as session:
                org.mark_notification_failed(session, key, str(exc))
                self._tell_operator(session, r, key, recipient, channel, message.subject, str(exc))
            log.warning("notification %s failed permanently: %s", key, exc)
            counts["failed"] += 1
            return
        except TransientDeliveryError:
            raise  # Temporal retries the activity with backoff; the decision row stays 'decided'
        with self._engine.begin() as conn:
            org.notification_sent(conn, key)
        counts["sent"] += 1

    def _tell_operator(self, session: Session, r: NotifyRequest, key: str, recipient: str, channel: str,
                       subject: str, error: str) -> None:
        """Escalate a notification that can never be delivered: a task in the operator's inbox, once
        per notification (same transaction as the ``failed`` mark, so a retry cannot open two)."""
        org.open_task(
            session,
            key=f"delivery-failed:{key}"[:300],
            contract_id=r.contract_id,
            milestone_key=r.item_key if r.item_type == "milestone" else None,
            assignee=self._settings.operator_user,
            title=f"Notification not delivered to {recipient} ({channel}): {subject}"[:300],
            body=f"{error}\n\nnotification {key}",
        )

    def _render(self, r: NotifyRequest, locale: str, cc: list[User], owner_name: str):
        from core.channels.render import render_notification

        return render_notification(
            r.kind,
            locale,
            {
                "contract_id": r.contract_id,
                "contract_title": r.contract_title,
                "customer": r.customer,
                "item_type": r.item_type,
                "item_key": r.item_key,
                "item_name": r.item_name,
                "owner_name": owner_name,
                "due_at": r.due_at,
                "days": r.days,
                "level": r.level,
                "amount": r.amount,
                "currency": r.currency,
                "cc": [u.name for u in cc],
                # The dashboard's page for the contract (a person reads this), not the JSON API.
                "link": f"{self._settings.public_url}/ui/contracts/{r.contract_id}",
            },
        )


def _unknown(user_id: str) -> User:
    """A recipient not (yet) in the directory: the inbox still works, email is recorded as failed."""
    return User(id=user_id, name=user_id, email=None, locale="zh", active=True)


def _maybe_die_for_test() -> None:
    marker = os.environ.get(FAULT_ENV)
    if marker and not Path(marker).exists():
        Path(marker).write_text("died after decision\n")
        os._exit(137)
