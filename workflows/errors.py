"""Failure types a contract workflow returns to callers; the API maps them to HTTP statuses."""

from temporalio.exceptions import ApplicationError

NOT_FOUND = "NotFound"  # -> 404
CONFLICT = "Conflict"  # -> 409: the request is fine but the contract's state forbids it
INVALID = "Invalid"  # -> 422: the request itself is wrong


def not_found(message: str) -> ApplicationError:
    return ApplicationError(message, type=NOT_FOUND, non_retryable=True)


def conflict(message: str) -> ApplicationError:
    return ApplicationError(message, type=CONFLICT, non_retryable=True)


def invalid(message: str) -> ApplicationError:
    return ApplicationError(message, type=INVALID, non_retryable=True)
