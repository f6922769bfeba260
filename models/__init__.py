from models.audit import AuditEntry
from models.auth import ApiKey, RevokedToken
from models.base import Base
from models.communication import Communication
from models.contract import Contract, ContractEvent, Customer, Installment, Milestone, Payment
from models.document import Document
from models.idempotency import IdempotencyKey
from models.login_throttle import LoginThrottle
from models.notification import Notification, Task
from models.org import Department, User
from models.outbox import AmendmentRecord, OutboxNotice
from models.webhook import WebhookDelivery, WebhookSubscription

__all__ = [
    "AmendmentRecord",
    "ApiKey",
    "AuditEntry",
    "Base",
    "Communication",
    "Contract",
    "ContractEvent",
    "Customer",
    "Department",
    "Document",
    "IdempotencyKey",
    "Installment",
    "LoginThrottle",
    "Milestone",
    "Notification",
    "OutboxNotice",
    "Payment",
    "RevokedToken",
    "Task",
    "User",
    "WebhookDelivery",
    "WebhookSubscription",
]
