"""Typed errors of the Sage Pro client, one per way the caller must react.

* `CredentialsError` (401/403): stop the run and alert; retrying cannot help.
* `RecordInvalid` (422): this item is wrong; dead-letter it with `code`/`details` and go on.
* `NotFound` (404), `Conflict` (409 other than the handled duplicates), `SageError` (other 4xx).
* `TransientError`: retries ran out on 429/5xx/network errors; the item can be tried again later.
* `SageUnavailable` (a `TransientError`): Sage is down; stop the day now rather than item by item.
"""

from __future__ import annotations

from typing import Any


class SageError(Exception):
    """An error answer of the Sage Pro API (or retries exhausted); carries the envelope's fields."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details: list[dict[str, Any]] = details or []
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None or self.code:
            parts.append(f"[{self.status} {self.code or ''}]".replace(" ]", "]"))
        if self.request_id:
            parts.append(f"(request {self.request_id})")
        return " ".join(parts)


class CredentialsError(SageError):
    """401/403: the user or password is wrong, or the user lacks a role. Never retried."""


class RecordInvalid(SageError):
    """422: the record breaks a rule (Unbalanced, PeriodClosed, ...); see `code` and `details`."""


class NotFound(SageError):
    """404: the record does not exist."""


class Conflict(SageError):
    """409 that the client could not resolve (e.g. a custno used by another Stripe customer)."""


class TransientError(SageError):
    """429/5xx/timeouts persisted through every retry; safe to try again later with the same key."""


class SageUnavailable(TransientError):
    """Sage does not answer at all (the circuit breaker is open): the message names the URL and the cause.

    Raised at once, without a request, while the breaker is open, so a day with hundreds of items fails
    in seconds instead of retrying each one; nothing was committed by the failed attempts.
    """


__all__ = [
    "Conflict",
    "CredentialsError",
    "NotFound",
    "RecordInvalid",
    "SageError",
    "SageUnavailable",
    "TransientError",
]
