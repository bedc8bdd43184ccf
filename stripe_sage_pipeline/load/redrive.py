"""Re-drive dead letters after a fix: re-plan each item from the current marts and post it.

A dead letter is an item Sage rejected (422) or that failed the pre-post account check; nothing of it
was committed. After the fix (an opened period, a corrected mapping rebuilt into the marts, a fixed
custno), the item is planned again from the marts and posted under the next attempt's idempotency key
(Sage stored the 422 under the previous key). Its external_ref is unchanged, so Sage's uniqueness still
guarantees it posts at most once, and a re-driven item that is posted is never re-driven again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg

from stripe_sage_pipeline.load import ledger as L
from stripe_sage_pipeline.load.customers import push_customers
from stripe_sage_pipeline.load.engine import LoadStats, Poster
from stripe_sage_pipeline.load.loaders import block_if_broken, plan_partition_receipts
from stripe_sage_pipeline.load.plan import (
    CUSTOMERS,
    INVOICES,
    JE,
    RECEIPTS,
    PlannedItem,
    entry_lines_by_id,
    invoice_lines,
    payout_status,
    plan_invoices,
    plan_journal_entries,
)
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.transform.mapping import Mapping, load_mapping


@dataclass
class RedriveResult:
    """Per item: what it was dead-lettered for and where it stands now."""

    items: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, LoadStats] = field(default_factory=dict)

    @property
    def posted(self) -> int:
        """Items that are posted now."""
        return sum(1 for i in self.items if i["status_now"] == "posted")

    @property
    def still_dead(self) -> int:
        """Items that failed again (with their new reason)."""
        return sum(1 for i in self.items if i["status_now"] == "dead_lettered")


def _replan(conn: psycopg.Connection, resource: str, rows: list[L.LedgerRow], mapping: Mapping) -> list[PlannedItem]:
    if resource == JE:
        lines = entry_lines_by_id(conn, [r.item_key for r in rows])
        lines = [ln for ln in lines if ln["posting_mode"] == mapping.posting_mode]
        statuses = payout_status(conn, [ln["payout_id"] for ln in lines if ln["entry_type"] == "payout_summary"])
        items = plan_journal_entries(lines, statuses)
        for item in items:
            block_if_broken(item.partition_date, [item])
        return items
    if resource == INVOICES:
        return plan_invoices(invoice_lines(conn, charge_ids=[r.external_ref for r in rows]))
    if resource == RECEIPTS:
        refs = {r.external_ref for r in rows}
        items: list[PlannedItem] = []
        for day in sorted({r.partition_date for r in rows if r.partition_date}):
            items += [i for i in plan_partition_receipts(conn, day, mapping) if i.external_ref in refs]
        return items
    return []


def redrive(
    url: str,
    client: Any,
    *,
    mapping: Mapping | None = None,
    resources: list[str] | None = None,
    refs: list[str] | None = None,
    poster: Poster | None = None,
) -> RedriveResult:
    """Re-plan and post every dead letter (optionally only some resources or external refs)."""
    mapping = mapping or load_mapping()
    own_poster = poster is None
    poster = poster or Poster(url, client)
    out = RedriveResult()
    try:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            L.ensure_schema(conn)
            dead = [
                r
                for r in L.rows_where(conn, "status = 'dead_lettered'")
                if (not resources or r.resource in resources) and (not refs or r.external_ref in refs)
            ]
            by_resource: dict[str, list[L.LedgerRow]] = defaultdict(list)
            for r in dead:
                by_resource[r.resource].append(r)
            before = {(r.resource, r.external_ref): r for r in dead}
            # Dependency order: customers before the documents that name them.
            if by_resource.get(CUSTOMERS):
                out.stats[CUSTOMERS] = push_customers(
                    url,
                    client,
                    mapping=mapping,
                    customer_ids=[r.external_ref for r in by_resource[CUSTOMERS]],
                    redrive=True,
                    transport=poster.transport,
                )
            for resource in (INVOICES, RECEIPTS, JE):
                rows = by_resource.get(resource)
                if not rows:
                    continue
                items = _replan(conn, resource, rows, mapping)
                out.stats[resource] = poster.sync(items, redrive=True)
            if by_resource.get(INVOICES):
                # Receipts waiting for these invoices can go now.
                days = sorted({r.partition_date for r in by_resource[INVOICES] if r.partition_date})
                receipts = [i for d in days for i in plan_partition_receipts(conn, d, mapping)]
                out.stats[RECEIPTS] = poster.sync(receipts, stats=out.stats.get(RECEIPTS))
            for (resource, ref), row in before.items():
                now = L.current_versions(conn, resource, [ref]).get(ref)
                out.items.append(
                    {
                        "resource": resource,
                        "external_ref": ref,
                        "version": row.version,
                        "reason_was": row.reason,
                        "status_now": now.status if now else "missing",
                        "sage_id": now.sage_id if now else None,
                        "reason_now": now.reason if now and now.status == "dead_lettered" else None,
                        "attempt": now.attempt if now else None,
                    }
                )
    finally:
        if own_poster:
            poster.close()
    return out
