"""Per-resource loaders: plan one posting date's items from the finance marts and hand them to the engine.

Before anything is sent, a partition's entries must satisfy the invariants of accounting.md (balanced
to the minor unit, one non-negative side per line); otherwise the whole partition is refused
(`PartitionBlocked`). Each loader takes an advisory lock or relies on the ledger, so a backfill and a
retry of the same date never post twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date

import psycopg

from stripe_sage_pipeline.load import ledger as L
from stripe_sage_pipeline.load.engine import LoadStats, PartitionBlocked, PlanError, Poster
from stripe_sage_pipeline.load.plan import (
    INVOICES,
    JE,
    RECEIPTS,
    PlannedItem,
    invoice_lines,
    journal_lines,
    payout_status,
    plan_cash_receipt,
    plan_invoices,
    plan_journal_entries,
    receipt_candidates,
)
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.transform.mapping import Mapping, load_mapping


def check_modes(mapping: Mapping) -> None:
    """Refuse a mapping whose revenue and posting modes contradict each other."""
    if mapping.revenue_mode == "invoice_driven" and mapping.posting_mode != "detail":
        raise PlanError(
            "revenue_mode invoice_driven needs posting_mode detail (a payout summary already books"
            " revenue); change one of them in mapping.yaml"
        )


def block_if_broken(day: date, items: Sequence[PlannedItem]) -> None:
    """Raise `PartitionBlocked` when any item of the date breaks a pre-post invariant."""
    problems = {f"{i.resource} {i.external_ref}": i.problems for i in items if i.problems}
    if problems:
        raise PartitionBlocked(day, problems)


def _invoiced_charges(
    conn: psycopg.Connection, day: date | None = None, charge_ids: Sequence[str] | None = None
) -> dict[str, str]:
    return {ln["charge_id"]: ln["custno"] for ln in invoice_lines(conn, day, charge_ids) if ln["custno"]}


def plan_partition_entries(conn: psycopg.Connection, day: date, mapping: Mapping) -> list[PlannedItem]:
    """The journal entries of one posting date in the selected mode (invoice-driven: minus the receipts)."""
    check_modes(mapping)
    lines = journal_lines(conn, day)
    skip: set[str] = set()
    if mapping.revenue_mode == "invoice_driven":
        charge_ids = [ln["charge_id"] for ln in lines if ln["charge_id"]]
        skip = set(receipt_candidates(lines, _invoiced_charges(conn, charge_ids=charge_ids), mapping))
    statuses = None
    if mapping.posting_mode == "payout_summary":
        statuses = payout_status(conn, [ln["payout_id"] for ln in lines if ln["entry_type"] == "payout_summary"])
    return plan_journal_entries(lines, statuses, skip)


def _mart_has_rows(conn: psycopg.Connection) -> bool:
    # An empty mart (a failed or skipped build) must never read as "every posted entry disappeared".
    return conn.execute("select exists (select 1 from finance.fct_journal_lines where is_selected_mode)").fetchone()[0]


def load_journal_entries(url: str, poster: Poster, day: date, mapping: Mapping | None = None) -> LoadStats:
    """Post the journal entries of one posting date; re-running posts only what is missing."""
    mapping = mapping or load_mapping()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        L.ensure_schema(conn)
        # One loader per date at a time, across processes (a backfill and a retry may overlap).
        conn.execute("select pg_advisory_lock(hashtext(%s))", (f"sage_load:{JE}:{day}",))
        try:
            items = plan_partition_entries(conn, day, mapping)
            block_if_broken(day, items)
            stats = poster.sync(items)
            if items or _mart_has_rows(conn):
                poster.sweep_orphans(JE, day, [i.external_ref for i in items], stats)
            return stats
        finally:
            conn.execute("select pg_advisory_unlock(hashtext(%s))", (f"sage_load:{JE}:{day}",))


def load_invoices(url: str, poster: Poster, day: date, mapping: Mapping | None = None) -> LoadStats:
    """Post the invoices of one date (invoice-driven revenue only; otherwise nothing to do)."""
    mapping = mapping or load_mapping()
    if mapping.revenue_mode != "invoice_driven":
        return LoadStats()
    check_modes(mapping)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        L.ensure_schema(conn)
        items = plan_invoices(invoice_lines(conn, day))
        block_if_broken(day, items)
    return poster.sync(items)


def check_invoices(url: str, day: date, mapping: Mapping) -> None:
    """Raise the `PartitionBlocked` the invoice load raises for `day` (invoice-driven revenue only).

    A range run (a backfill) asks it before the day's receipts and journal entries: a day whose invoices
    were refused posts nothing else, as in a one-day run, where the failed invoice step stops the rest.
    """
    if mapping.revenue_mode != "invoice_driven":
        return
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        block_if_broken(day, plan_invoices(invoice_lines(conn, day)))


def plan_partition_receipts(conn: psycopg.Connection, day: date, mapping: Mapping) -> list[PlannedItem]:
    """Cash receipts for the charge entries of one date whose invoice is posted (else held)."""
    lines = journal_lines(conn, day)
    charge_ids = [ln["charge_id"] for ln in lines if ln["charge_id"]]
    facts = receipt_candidates(lines, _invoiced_charges(conn, charge_ids=charge_ids), mapping)
    posted = L.current_versions(conn, INVOICES, [f["charge_id"] for f in facts.values()])
    invnos = {ref: row.sage_id for ref, row in posted.items() if row.status == "posted"}
    return [plan_cash_receipt(f, invnos.get(f["charge_id"])) for f in facts.values()]


def load_cash_receipts(url: str, poster: Poster, day: date, mapping: Mapping | None = None) -> LoadStats:
    """Post the cash receipts of one date (invoice-driven revenue only)."""
    mapping = mapping or load_mapping()
    if mapping.revenue_mode != "invoice_driven":
        return LoadStats()
    check_modes(mapping)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        L.ensure_schema(conn)
        items = plan_partition_receipts(conn, day, mapping)
    return poster.sync(items)


def load_partition(
    url: str,
    poster: Poster,
    day: date,
    mapping: Mapping | None = None,
    customers: Callable[[], LoadStats] | None = None,
) -> dict[str, LoadStats]:
    """Everything of one date in dependency order: customers, invoices, receipts, journal entries."""
    mapping = mapping or load_mapping()
    out: dict[str, LoadStats] = {}
    if customers is not None:
        out["customers"] = customers()
    out[INVOICES] = load_invoices(url, poster, day, mapping)
    out[RECEIPTS] = load_cash_receipts(url, poster, day, mapping)
    out[JE] = load_journal_entries(url, poster, day, mapping)
    return out


__all__ = [
    "block_if_broken",
    "check_modes",
    "load_cash_receipts",
    "load_invoices",
    "load_journal_entries",
    "load_partition",
    "plan_partition_entries",
    "plan_partition_receipts",
]
