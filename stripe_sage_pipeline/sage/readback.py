"""GL read-back for the tie-out: what the target's general ledger says moved, per currency and account."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from stripe_sage_pipeline.sage.target import as_target


def gl_movement(
    client: Any,
    accounts: Iterable[str] | None = None,
    from_date: date | str | None = None,
    to_date: date | str | None = None,
) -> dict[str, dict[str, str]]:
    """Net debit − credit per currency and account as the target reports it (a `SageClient` or a `Target`)."""
    return as_target(client).gl_movement(accounts, from_date, to_date)


__all__ = ["gl_movement"]
