"""Rules of the automation: which posting days to load, what an event triggers, which claims to re-launch.

Plain functions over Postgres so that sensors and schedules stay thin and these stay testable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from stripe_sage_pipeline.load import ledger as L
from stripe_sage_pipeline.load.decide import Kind, decide
from stripe_sage_pipeline.load.loaders import plan_partition_entries, plan_partition_receipts
from stripe_sage_pipeline.load.plan import (
    CUSTOMERS,
    INVOICES,
    JE,
    RECEIPTS,
    PlannedItem,
    customer_rows,
    invoice_lines,
    payout_status,
    plan_customer,
    plan_invoices,
)
from stripe_sage_pipeline.transform.mapping import Mapping

PAYOUT_EVENTS = ("payout.paid", "payout.failed", "payout.canceled")


def _exists(conn: psycopg.Connection, relation: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]


# -- which days to load ----------------------------------------------------------------------------


# What the ledger's decision does when a load has nothing to send for an item.
NOTHING_TO_SEND = frozenset({Kind.HOLD, Kind.UNCHANGED, Kind.WAIT})


def needs_posting(item: PlannedItem, current: L.LedgerRow | None) -> bool:
    """Whether a load would send anything for this planned item: the ledger's own decision (`load.decide`).

    New, in flight (`computed`), changed since posted, or reversed: yes. Held (an incomplete payout,
    a receipt whose invoice is not posted), unchanged, or dead-lettered (waiting for a re-drive): no.
    An item that breaks an invariant counts: its day's load refuses it loudly.
    """
    if item.problems:
        return True
    return decide(current, item).kind not in NOTHING_TO_SEND


def _current(conn: psycopg.Connection, items: Iterable[PlannedItem]) -> dict[tuple[str, str], L.LedgerRow]:
    by_resource: dict[str, list[str]] = defaultdict(list)
    for i in items:
        by_resource[i.resource].append(i.external_ref)
    out: dict[tuple[str, str], L.LedgerRow] = {}
    for resource, refs in by_resource.items():
        out.update({(resource, ref): row for ref, row in L.current_versions(conn, resource, refs).items()})
    return out


def day_has_work(conn: psycopg.Connection, day: date, mapping: Mapping) -> bool:
    """Whether loading `day` would post, resend or reverse anything: the load's own planning, against the ledger."""
    entries = plan_partition_entries(conn, day, mapping)
    items = list(entries)
    if mapping.revenue_mode == "invoice_driven":
        invoices = plan_invoices(invoice_lines(conn, day))
        items += invoices
        invoiced_now = {i.external_ref for i in invoices}
        receipts = plan_partition_receipts(conn, day, mapping)
        # A receipt waits for its invoice; when that invoice posts in the same load, the receipt follows it.
        items += [r for r in receipts if not (r.hold_reason == "InvoiceNotPosted" and r.depends_on in invoiced_now)]
    current = _current(conn, items)
    if any(needs_posting(i, current.get((i.resource, i.external_ref))) for i in items):
        return True
    # Entries posted for this day that the marts no longer produce are reversed by the load (orphans).
    planned = {i.external_ref for i in entries}
    return any(
        row.external_ref not in planned and _is_current(conn, row)
        for row in L.rows_where(conn, "resource = %s and partition_date = %s and status = 'posted'", (JE, day))
    )


def _is_current(conn: psycopg.Connection, row: L.LedgerRow) -> bool:
    return L.current_versions(conn, row.resource, [row.external_ref])[row.external_ref].version == row.version


# Entries of the selected mode that a load has not settled: no current ledger row (as a journal entry
# or, invoice-driven, as the cash receipt that replaces it), one in flight, or a mart line rewritten
# after the ledger row last changed. A build never overlaps a load (transform/marts.py), so a line not
# rewritten since its entry was posted cannot have changed.
_UNSETTLED_ENTRIES = f"""
with cur as (
    select distinct on (resource, external_ref) resource, external_ref, status, updated_at
    from {L.SCHEMA}.posting_ledger where resource in (%(je)s, %(rc)s)
    order by resource, external_ref, version desc
)
select j.posting_date, j.entry_id, min(j.entry_type), min(j.payout_id),
       bool_or(je.external_ref is not null or rc.external_ref is not null) as has_ledger_row
from finance.fct_journal_lines j
left join cur je on je.resource = %(je)s and je.external_ref = j.external_ref
left join cur rc on rc.resource = %(rc)s and rc.external_ref = j.external_ref
where j.is_selected_mode and j.posting_date between %(first)s and %(today)s
  and not coalesce(je.status in ('posted', 'dead_lettered') and j._loaded_at <= je.updated_at, false)
  and not coalesce(rc.status in ('posted', 'dead_lettered') and j._loaded_at <= rc.updated_at, false)
group by 1, 2
"""

_ORPHAN_DAYS = f"""
with cur as (
    select distinct on (external_ref) external_ref, status, partition_date
    from {L.SCHEMA}.posting_ledger where resource = %(je)s order by external_ref, version desc
)
select distinct c.partition_date from cur c
where c.status = 'posted' and c.partition_date between %(first)s and %(today)s
  and not exists (select 1 from finance.fct_journal_lines j where j.is_selected_mode and j.external_ref = c.external_ref)
  -- as the load: an empty mart (a failed build) never reads as "every posted entry disappeared"
  and exists (select 1 from finance.fct_journal_lines where is_selected_mode)
"""

_UNSETTLED_INVOICE_DAYS = f"""
with cur as (
    select distinct on (external_ref) external_ref, status, updated_at
    from {L.SCHEMA}.posting_ledger where resource = %(inv)s order by external_ref, version desc
)
select distinct i.posting_date from finance.fct_invoice_lines i
left join cur c on c.external_ref = i.charge_id
where i.posting_date between %(first)s and %(today)s
  and not coalesce(c.status in ('posted', 'dead_lettered') and i._loaded_at <= c.updated_at, false)
"""


def days_to_load(
    conninfo: str,
    today: date,
    first_day: date | None = None,
    mapping: Mapping | None = None,
    customer_mapping: Mapping | None = None,
) -> list[date]:
    """Exactly the posting days (first_day .. today) on which a load would post, resend or reverse something.

    `mapping` is the one the marts were built with (`transform.marts.built_mapping`, read when not
    given); `customer_mapping` the one the customer push reads (mapping.yaml's `customer_sync`).
    Covers every resource a load posts: journal entries (new, changed, in flight, orphaned), invoices
    and cash receipts (invoice-driven revenue), and customers (a customer is pushed by the load of any
    day on or after its creation, so it adds a day only when no other day covers it). Held items (a
    summary entry whose payout does not reconcile, a receipt whose invoice is not posted) and dead
    letters add no day: loading would change nothing. New entries that cannot be held settle their
    day without planning; every other candidate day is planned exactly as the load plans it.
    """
    from stripe_sage_pipeline.transform.mapping import load_mapping
    from stripe_sage_pipeline.transform.marts import built_mapping

    first = first_day or date(1970, 1, 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if not _exists(conn, "finance.fct_journal_lines"):
            return []
        mapping = mapping or built_mapping(conninfo)
        if mapping is None:
            return []
        L.ensure_schema(conn)
        params = {"je": JE, "rc": RECEIPTS, "inv": INVOICES, "first": first, "today": today}
        entries = conn.execute(_UNSETTLED_ENTRIES, params).fetchall()
        summary_payouts = [p for _, _, kind, p, known in entries if kind == "payout_summary" and not known and p]
        statuses = payout_status(conn, summary_payouts) if mapping.posting_mode == "payout_summary" else None
        sure: set[date] = set(r[0] for r in conn.execute(_ORPHAN_DAYS, params).fetchall())
        unsure: set[date] = set()
        for day, _, kind, payout_id, known in entries:
            if known or mapping.revenue_mode == "invoice_driven":
                unsure.add(day)  # a content change, or a charge that may become a held receipt: plan it
            elif kind != "payout_summary" or statuses is None or statuses.get(payout_id) == "reconciled":
                sure.add(day)  # a new entry nothing can hold
        if mapping.revenue_mode == "invoice_driven" and _exists(conn, "finance.fct_invoice_lines"):
            unsure |= {r[0] for r in conn.execute(_UNSETTLED_INVOICE_DAYS, params).fetchall()}
        days = set(sure) | {d for d in sorted(unsure - sure) if day_has_work(conn, d, mapping)}
        if _exists(conn, "finance.dim_customers"):
            owns = (customer_mapping or load_mapping()).customer_sync.sage_owns
            rows = customer_rows(conn, up_to=today)
            items = {r["customer_id"]: plan_customer(r, owns) for r in rows}
            current = L.current_versions(conn, CUSTOMERS, list(items))
            created = [
                max(first, _utc_day(r["created_at"]))
                for r in rows
                if needs_posting(items[r["customer_id"]], current.get(r["customer_id"]))
            ]
            if created and not any(d >= max(created) for d in days):
                days.add(max(created))
    return sorted(d for d in days if first <= d <= today)


def _utc_day(value: Any) -> date:
    if isinstance(value, datetime):
        return value.astimezone(UTC).date() if value.tzinfo else value.date()
    return value


# -- events ------------------------------------------------------------------------------------------


def split_events(events: list[dict]) -> tuple[list[dict], list[dict]]:
    """(payout status events, everything else) from inbox rows."""
    payouts = [e for e in events if e["event_type"] in PAYOUT_EVENTS]
    others = [e for e in events if e["event_type"] not in PAYOUT_EVENTS]
    return payouts, others


def event_day(events: Iterable[dict], timezone: str = "UTC", today: date | None = None) -> date:
    """The posting day the fast path loads for these events: the newest one's date in the posting time zone.

    An event changes Stripe now, so what it books (a refund, a dispute, a payout's status) is dated on
    the day it happened; anything dated elsewhere is left to the load sensor after the run. Never
    later than `today` (the last partition that exists).
    """
    tz = ZoneInfo(timezone)
    stamps = [e["event_created"] or e.get("received_at") for e in events]
    stamps = [s for s in stamps if s is not None]
    newest = max(stamps) if stamps else datetime.now(UTC)
    day = newest.astimezone(tz).date()
    limit = today or datetime.now(tz).date()
    return min(day, limit)


def inbox_claims(conninfo: str, key_prefix: str, since: datetime) -> dict[str, list[dict]]:
    """Inbox events claimed by run keys starting with `key_prefix` since `since`: run key → its events."""
    from stripe_sage_pipeline.extract.webhooks import ensure_inbox

    with psycopg.connect(conninfo, autocommit=True) as conn:
        ensure_inbox(conn)
        cur = conn.execute(
            "select process_run_id, event_id, event_type, object_type, object_id, event_created"
            " from stripe_staging.webhook_inbox where processed_at >= %s and process_run_id like %s"
            " order by event_created nulls last, received_at, event_id",
            (since, key_prefix.replace("%", r"\%").replace("_", r"\_") + "%"),
        )
        out: dict[str, list[dict]] = defaultdict(list)
        for key, *rest in cur.fetchall():
            out[key].append(
                dict(zip(("event_id", "event_type", "object_type", "object_id", "event_created"), rest, strict=True))
            )
    return dict(out)


def unlaunched_claims(claims: dict[str, list[dict]], launched: Callable[[str], bool]) -> dict[str, list[dict]]:
    """Claims whose run was never created (the launch failed, or the process died before it): re-request them.

    The same run key is requested again, so a launch that did happen after all is not repeated.
    """
    return {key: events for key, events in claims.items() if not launched(key)}


CLAIM_RECHECK = timedelta(hours=6)
