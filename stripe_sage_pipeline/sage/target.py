"""What the load stage needs from an accounting system: the `Target` protocol, and `as_target`.

The posting ledger, planning, idempotency keys, reversals, dead letters and re-drive live in
`stripe_sage_pipeline.load` and are the same for every target. What differs per target sits behind
this small interface:

* payload shapes: `post` takes the planned payload (the Sage Pro contract's shape, which is also what
  the ledger stores and hashes) and sends whatever the target's API wants;
* references: the Stripe id (`external_ref`, versioned `txn_…~v2`) is kept in a searchable field;
* auth, retries and rate limits: inside the target's HTTP client;
* error mapping: every answer becomes one of `sage.errors` (422-like → `RecordInvalid` with
  details `{field, code, message}` whose codes are the dead-letter reasons: PeriodClosed,
  AccountNotFound, Unbalanced, …; 401/403 → `CredentialsError`; exhausted retries → `TransientError`);
* duplicate look-up: `find` (look before write, and after a lost response);
* GL read-back: `gl_movement`, net debit − credit per currency and account.

Two implementations: `sagepro` (`SageProTarget`, the project's REST contract) and `intacct`
(`stripe_sage_pipeline.sage.intacct.IntacctTarget`, Sage Intacct's REST API v1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date
from typing import Any, Protocol, runtime_checkable

from stripe_sage_pipeline.sage.client import PostResult

# Resource names of the planned items (the Sage Pro contract's collection names).
JE = "journal-entries"
CUSTOMERS = "customers"
INVOICES = "invoices"
RECEIPTS = "cash-receipts"
RESOURCES = (CUSTOMERS, INVOICES, RECEIPTS, JE)


@runtime_checkable
class Target(Protocol):
    """One accounting system the load stage posts to."""

    name: str

    def post(self, resource: str, body: dict[str, Any], *, idempotency_key: str, external_ref: str) -> PostResult:
        """Create one record exactly once (a replay or an existing record is a success, not a duplicate)."""
        ...

    def find(self, resource: str, external_ref: str) -> str | None:
        """The target's id of the record carrying `external_ref`, or None."""
        ...

    def reverse_journal_entry(
        self,
        sage_id: str,
        idempotency_key: str,
        *,
        posting_date: date | str | None,
        external_ref: str,
        description: str,
    ) -> PostResult:
        """Reverse a posted journal entry at the given date (idempotent: a second call finds the first)."""
        ...

    def accounts(self) -> list[dict[str, Any]]:
        """The chart of accounts as `{glacnt, description, active, postable}`."""
        ...

    def update_customer(self, custno: str, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """Update the Stripe-owned fields of a customer; `NotFound` when it does not exist."""
        ...

    def changed_customers(self, updated_since: str | None) -> Iterator[dict[str, Any]]:
        """Customers changed since a cursor, in the Sage Pro customer shape (`custno`, `external_ref`, …)."""
        ...

    def gl_movement(
        self,
        accounts: Iterable[str] | None = None,
        from_date: date | str | None = None,
        to_date: date | str | None = None,
    ) -> dict[str, dict[str, str]]:
        """Net debit − credit per currency (lower case) and account, as decimal strings."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def as_target(client: Any) -> Target:
    """A `Target` for a target or a bare `SageClient` (which is wrapped as the `sagepro` target)."""
    if isinstance(client, Target):
        return client
    from stripe_sage_pipeline.sage.sagepro import SageProTarget

    return SageProTarget(client)


__all__ = ["CUSTOMERS", "INVOICES", "JE", "RECEIPTS", "RESOURCES", "Target", "as_target"]
