"""The `sagepro` target: the project's Sage Pro REST contract through `SageClient`, unchanged.

Planned payloads are already in this contract's shape, so `post` sends them as they are; the Stripe
id travels as `external_ref`, which Sage Pro keeps unique and lets a client search.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date
from typing import Any

from stripe_sage_pipeline.sage.client import ID_FIELDS, PostResult, SageClient
from stripe_sage_pipeline.sage.errors import NotFound


class SageProTarget:
    """`Target` over a `SageClient` (one company of a Sage Pro facade)."""

    name = "sagepro"

    def __init__(self, client: SageClient) -> None:
        self.client = client

    def post(self, resource: str, body: dict[str, Any], *, idempotency_key: str, external_ref: str) -> PostResult:
        """POST the planned body with its idempotency key and external_ref (409 duplicates resolved)."""
        return self.client.post(resource, body, idempotency_key=idempotency_key, external_ref=external_ref)

    def find(self, resource: str, external_ref: str) -> str | None:
        """`GET /{resource}?external_ref=…`: the id of the record carrying the ref, or None."""
        try:
            rec = self.client.find_by_external_ref(resource, external_ref)
        except NotFound:
            return None
        return None if rec is None else str(rec[ID_FIELDS[resource]])

    def reverse_journal_entry(
        self,
        sage_id: str,
        idempotency_key: str,
        *,
        posting_date: date | str | None,
        external_ref: str,
        description: str,
    ) -> PostResult:
        """`POST /journal-entries/{batch_no}/reverse` (a second reversal answers with the first)."""
        return self.client.reverse_journal_entry(
            sage_id, idempotency_key, posting_date=posting_date, external_ref=external_ref, description=description
        )

    def accounts(self) -> list[dict[str, Any]]:
        """`GET /accounts`, every page."""
        return list(self.client.list_all("/accounts"))

    def update_customer(self, custno: str, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """`PATCH /customers/{custno}`."""
        return self.client.patch_customer(custno, body, idempotency_key)

    def changed_customers(self, updated_since: str | None) -> Iterator[dict[str, Any]]:
        """`GET /customers?updated_since=…`, every page."""
        return self.client.list_all("/customers", {"updated_since": updated_since} if updated_since else {})

    def gl_movement(
        self,
        accounts: Iterable[str] | None = None,
        from_date: date | str | None = None,
        to_date: date | str | None = None,
    ) -> dict[str, dict[str, str]]:
        """`GET /accounts/{glacnt}/balance` per account: net per currency."""
        codes = list(accounts) if accounts is not None else [a["glacnt"] for a in self.accounts()]
        out: dict[str, dict[str, str]] = {}
        for code in codes:
            bal = self.client.account_balance(code, from_date, to_date)
            for cur, b in (bal.get("balances") or {}).items():
                out.setdefault(cur.lower(), {})[code] = b["net"]
        return out

    def close(self) -> None:
        """Close the client."""
        self.client.close()


__all__ = ["SageProTarget"]
