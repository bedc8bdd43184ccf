"""Intacct's `ia::error` envelope mapped to the load stage's typed errors and dead-letter reasons.

The reasons are the Sage Pro contract's detail codes, so dead letters read the same whatever the target:
PeriodClosed, AccountNotFound, AccountInactive, Unbalanced, CustomerNotFound, InvalidAmount,
OverApplied, RecordDuplicate, and ValidationFailed for anything else Intacct refuses. Intacct does not
publish a catalogue of errorIds: `ERROR_IDS` lists the ones the emulator answers with, and
`classify_detail` falls back to the detail's target and message, which is how a real company's ids map.
"""

from __future__ import annotations

import re
from typing import Any

from stripe_sage_pipeline.sage.errors import Conflict, CredentialsError, NotFound, RecordInvalid, SageError

ERROR_IDS: dict[str, str] = {
    "GL-PERIOD-CLOSED": "PeriodClosed",
    "GL-ACCOUNT-INVALID": "AccountNotFound",
    "GL-ACCOUNT-INACTIVE": "AccountInactive",
    "GL-ACCOUNT-NO-DIRECT-POSTING": "AccountInactive",
    "GL-UNBALANCED": "Unbalanced",
    "AR-CUSTOMER-INVALID": "CustomerNotFound",
    "AR-INVOICE-INVALID": "InvoiceNotFound",
    "AR-OVERAPPLIED": "OverApplied",
    "AR-INVOICE-DUPLICATE": "RecordDuplicate",
    "AR-CUSTOMER-DUPLICATE": "RecordDuplicate",
    "EMU-AMOUNT": "InvalidAmount",
    "EMU-CURRENCY": "InvalidCurrency",
}
# (pattern over "target message", reason), first match wins; for errorIds not in the table.
MESSAGE_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"period.*(closed|not open)|(closed|locked).*period", re.I), "PeriodClosed"),
    (re.compile(r"account.*inactive|inactive.*account|direct posting", re.I), "AccountInactive"),
    (re.compile(r"account.*(not (a )?valid|invalid|does not exist|not found)", re.I), "AccountNotFound"),
    (re.compile(r"(do not|does not|don't|not) balance|unbalanced", re.I), "Unbalanced"),
    (re.compile(r"customer.*(not (a )?valid|invalid|does not exist|not found)", re.I), "CustomerNotFound"),
    (re.compile(r"exceeds.*(due|balance)|over.?appl", re.I), "OverApplied"),
    (re.compile(r"already (exists|used)|duplicate", re.I), "RecordDuplicate"),
    (re.compile(r"currency", re.I), "InvalidCurrency"),
    (re.compile(r"amount", re.I), "InvalidAmount"),
]


def ia_error(payload: Any) -> dict[str, Any]:
    """The `ia::error` object of an answer, or {}."""
    if not isinstance(payload, dict):
        return {}
    result = payload.get("ia::result")
    err = result.get("ia::error") if isinstance(result, dict) else None
    return err if isinstance(err, dict) else {}


def classify_detail(error_id: str | None, target: str | None, message: str | None) -> str:
    """The dead-letter reason of one error detail."""
    if error_id and error_id in ERROR_IDS:
        return ERROR_IDS[error_id]
    text = f"{target or ''} {message or ''}"
    return next((reason for pattern, reason in MESSAGE_RULES if pattern.search(text)), "ValidationFailed")


def sage_details(err: dict[str, Any]) -> list[dict[str, Any]]:
    """The error's details in the Sage Pro shape `{field, code, message}` (plus Intacct's errorId)."""
    items = err.get("details") or [{"errorId": err.get("errorId"), "target": None, "message": err.get("message")}]
    return [
        {
            "field": (d.get("target") or "").lstrip("/").replace("/", ".") or None,
            "code": classify_detail(d.get("errorId"), d.get("target"), d.get("message")),
            "message": d.get("message") or err.get("message") or "",
            "errorId": d.get("errorId"),
        }
        for d in items
    ]


def to_exception(status: int, payload: Any, request_id: str | None = None, what: str = "") -> SageError:
    """The typed error for a final (non-retryable) error answer of Intacct."""
    err = ia_error(payload)
    message = err.get("message") or f"HTTP {status}"
    if what:
        message = f"{what}: {message}"
    details = sage_details(err) if err else []
    kwargs: dict[str, Any] = {
        "status": status,
        "code": err.get("errorId") or err.get("code"),
        "details": details,
        "request_id": request_id or err.get("supportId"),
    }
    if status in (401, 403):
        return CredentialsError(
            f"Sage Intacct refused the credentials ({message}): check INTACCT_CLIENT_ID,"
            " INTACCT_CLIENT_SECRET, INTACCT_USERNAME and the web services user's permissions",
            **kwargs,
        )
    if status == 404:
        return NotFound(message, **kwargs)
    if status in (400, 422):
        if details and all(d["code"] == "RecordDuplicate" for d in details):
            return Conflict(message, **kwargs)
        return RecordInvalid(message, **kwargs)
    if status == 409:
        return Conflict(message, **kwargs)
    return SageError(message, **kwargs)


__all__ = ["ERROR_IDS", "MESSAGE_RULES", "classify_detail", "ia_error", "sage_details", "to_exception"]
