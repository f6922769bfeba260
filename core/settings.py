"""All configuration, from the environment (or a .env file).  One class, read once at start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The embedded default's files live in the project's data/ folder, wherever the command runs
# from: `contracts doctor` run from another directory found no database at ./data.
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # SQLite file by default; production sets e.g. postgresql+psycopg2://user:pw@db/contracts
    database_url: str = f"sqlite:///{DATA_DIR / 'contracts.db'}"
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    task_queue: str = "contracts"
    # How long the API waits for a workflow to answer an update (payment, completion, approval...)
    # before it asks Temporal once more and then answers 503: no worker up means a retryable 503
    # within about twice this, not a request hanging until the client gives up.
    update_timeout_seconds: float = 30.0
    # How long an API request waits for one database call before it answers 503 (or goes on
    # without the read model where it can: payments and other updates reach the workflow alone).
    database_call_seconds: float = 5.0
    # Threads the API runs its database calls in (each call stuck on a silent database holds one).
    api_threads: int = 32
    # Where the Temporal Web UI is, for links shown to people.
    temporal_ui_url: str = "http://localhost:8233"
    # Calendar dates (effective_date: 2026-03-01) are read in this zone.
    business_timezone: str = "Asia/Shanghai"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # A contract row older than this still in 'starting' has its workflow (re)started.
    reconcile_after_seconds: float = 30.0
    # Where people reach the API/pages; used for links in notifications.
    public_url: str = "http://127.0.0.1:8000"
    # Notifications.  Email goes over SMTP; in dev a local catcher can listen on 1025.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_from: str = "Contract Tracking <contracts@localhost>"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = 10.0
    # Connections to the SMTP server are kept open and reused across messages (core/channels/email.py):
    # at most this many idle per server and process (0: one connection per message).  One idle
    # longer than `smtp_pool_idle_seconds` is closed rather than reused (servers drop idle clients).
    smtp_pool_size: int = 8
    smtp_pool_idle_seconds: float = 30.0
    webhook_timeout_seconds: float = 10.0
    # Webhooks (subscriptions and departments' endpoints) go to public addresses only: a URL whose
    # host is or resolves to a loopback, link-local, private (RFC 1918, fc00::/7), unspecified or
    # multicast address is refused at registration (422) and at delivery (failed, not retried), so
    # the service cannot be made to POST into its own network.  Development and the tests, whose
    # receivers listen on 127.0.0.1, turn this on.
    webhook_allow_private_targets: bool = False
    # A notification that can never be delivered (invalid address, 5xx SMTP, 4xx webhook) is recorded
    # `failed` and escalated to this operator: a task in their inbox (GET /tasks?assignee=operator).
    operator_user: str = "operator"
    # Outgoing webhook subscriptions (/webhooks, docs/webhooks.md): the dispatcher in the worker.
    webhook_dispatch_enabled: bool = True
    webhook_poll_seconds: float = 0.5
    webhook_retry_initial_seconds: float = 2.0  # doubled after each failed attempt...
    webhook_retry_max_interval_seconds: float = 600.0  # ...up to this
    webhook_max_attempts: int = 12  # then the event is recorded `failed` and the next one goes
    webhook_retry_window_seconds: float = 86400.0  # nor retried longer than this after its first attempt
    webhook_lease_seconds: float = 60.0  # a replica's claim on a subscription; must exceed one attempt
    webhook_gap_grace_seconds: float = 30.0  # longest wait for an uncommitted lower event id
    webhook_max_parallel: int = 8  # subscriptions served at once per worker
    # Idempotency-Key on POST/PATCH (api/platform/idempotency.py): how long a key is remembered, how long a
    # request holds its key before a crashed one is taken over (renewed while it runs), how long a
    # concurrent request with the same key waits for the first before answering 409.
    idempotency_ttl_seconds: float = 86400.0
    idempotency_lock_seconds: float = 60.0
    idempotency_wait_seconds: float = 5.0
    # Seed the demo organisation (users, departments) at start-up in dev mode.
    seed_demo_org: bool = False
    # Seed the demo data set (core/demo_data.py: two years of history, live contracts) once, in dev
    # mode (`python3 run.py` turns it on unless SEED_DEMO_DATA=0).
    seed_demo_data: bool = False
    # Authentication (api/auth/service.py, core/security.py).  ``production`` refuses to start with demo
    # passwords (SEED_DEMO_ORG) or without a real JWT_SECRET; ``dev`` makes up a secret per process.
    environment: Literal["dev", "production"] = "dev"
    jwt_secret: str | None = None
    access_token_minutes: int = 60
    # Failed log-ins (api/auth/login_throttle.py): this many wrong passwords for one user name, or from one
    # client address, within the window block log-ins for that name / from that address (429 with
    # Retry-After) for the lockout.  A successful log-in clears the name's count.
    login_max_failures: int = 5
    login_max_failures_per_address: int = 50
    login_failure_window_seconds: float = 900.0
    login_lockout_seconds: float = 900.0
    # A bootstrap key with the admin role, for the first API keys and for operators' scripts; unset
    # = none.  Sent as a bearer token, an X-API-Key header or HTTP Basic's password.
    admin_api_key: str | None = None
    # The "admin" person's first password (set only while that user has none).  Dev seeds "admin".
    admin_password: str | None = None
    # In dev the demo people (li.wei, zhang.min...) log in with this password; never in production.
    demo_password: str = "demo"
    # Uploaded documents (api/documents/service.py): where the content-addressed files live, and the limits.
    document_dir: str = str(DATA_DIR / "documents")
    max_upload_bytes: int = 25 * 1024 * 1024
    # Request bodies other than uploads (JSON, forms): larger ones are refused with 413 before they
    # are read whole (api/platform/guards.py).  A finance batch of 5,000 lines with long references fits.
    max_json_body_bytes: int = 8 * 1024 * 1024
    # A contract's built spec (what its workflow starts with), encoded as Temporal sends it: a larger
    # one is refused (422) before its row is written.  Temporal refuses payloads over 2 MB, and the
    # workflow carries the spec in every continue-as-new and state query.
    max_contract_spec_bytes: int = 512 * 1024
    # Worker tuning: cached workflows bound worker memory; pollers scale with load.
    max_cached_workflows: int = 2000
    max_concurrent_activities: int = 50
    max_concurrent_workflow_tasks: int = 10
    # The notification outbox (core/outbox.py): reminders and notices the contracts decided, sent
    # at their time by a dispatcher in each worker process.
    outbox_dispatch_enabled: bool = True
    outbox_poll_seconds: float = 0.25  # the longest a due notice waits when nothing woke the dispatcher
    outbox_batch: int = 200  # notices claimed per round
    outbox_parallel: int = 8  # sent at once per worker process
    outbox_lease_seconds: float = 60.0  # a claim on a notice; a crashed dispatcher's runs out
    outbox_max_attempts: int = 20  # transient failures retried with back-off, then `failed`
    outbox_retry_initial_seconds: float = 2.0
    outbox_retry_max_interval_seconds: float = 300.0
    # One reminder (same item, same offset) for due dates this close is one reminder: the copy a
    # lost-and-rerun workflow task planned a few seconds later is not sent again (core/outbox.py).
    outbox_same_reminder_within_seconds: float = 12 * 3600

    @model_validator(mode="after")
    def _no_dev_credentials_in_production(self) -> Settings:
        if self.environment == "production":
            if not self.jwt_secret or len(self.jwt_secret) < 32:
                raise ValueError("production needs JWT_SECRET (at least 32 characters)")
            if self.seed_demo_org or self.seed_demo_data:
                raise ValueError("production must not seed the demo organisation: it has known passwords")
            if self.admin_password in ("admin", "demo"):
                raise ValueError("production must not use a default ADMIN_PASSWORD")
            if self.admin_api_key is not None and len(self.admin_api_key) < 32:
                raise ValueError("ADMIN_API_KEY must be at least 32 characters in production")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
