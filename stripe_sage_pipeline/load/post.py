"""Post one posting date to the target through the posting ledger, idempotently (compatibility module).

The load stage is split into `decide` (the ledger's decision, a pure function), `engine` (the loop that
carries decisions out: `Poster`, `LoadStats`), `loaders` (one posting date per resource) and, in
`stripe_sage_pipeline.sage`, the targets, the HTTP client factory and the GL read-back. This module keeps
the names callers imported from here before the split.
"""

from __future__ import annotations

from stripe_sage_pipeline.load.engine import (
    AccountBook,
    LoadStats,
    PartitionBlocked,
    PlanError,
    Poster,
    error_reason,
)
from stripe_sage_pipeline.load.loaders import (
    block_if_broken,
    check_modes,
    load_cash_receipts,
    load_invoices,
    load_journal_entries,
    load_partition,
    plan_partition_entries,
    plan_partition_receipts,
)
from stripe_sage_pipeline.sage.factory import CountingTransport, make_client
from stripe_sage_pipeline.sage.readback import gl_movement

__all__ = [
    "AccountBook",
    "CountingTransport",
    "LoadStats",
    "PartitionBlocked",
    "PlanError",
    "Poster",
    "block_if_broken",
    "check_modes",
    "error_reason",
    "gl_movement",
    "load_cash_receipts",
    "load_invoices",
    "load_journal_entries",
    "load_partition",
    "make_client",
    "plan_partition_entries",
    "plan_partition_receipts",
]
