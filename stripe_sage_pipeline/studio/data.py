"""What the studio reads from Postgres: staging and marts for a period, the posting ledger's state.

Read-only queries; the preview never writes and never calls Sage. Schemas are the dbt project's
(`finance`, `finance_intermediate`, `finance_staging`) and the ledger's (`sage_sync`).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from stripe_sage_pipeline.reporting.closepack import month_bounds
from stripe_sage_pipeline.studio.rules import MonthData

MARTS = "finance"
INTERMEDIATE = "finance_intermediate"
STAGING_VIEWS = "finance_staging"


def _exists(conn: psycopg.Connection, relation: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]


def marts_ready(conn: psycopg.Connection) -> bool:
    """True when the marts the studio reads have been built."""
    return all(
        _exists(conn, r)
        for r in (
            f"{MARTS}.fct_journal_lines",
            f"{INTERMEDIATE}.int_balance_transactions__classified",
            f"{MARTS}.fct_payout_reconciliation",
        )
    )


def months_with_activity(conn: psycopg.Connection) -> list[str]:
    """'YYYY-MM' of every month with journal lines, newest first."""
    if not marts_ready(conn):
        return []
    rows = conn.execute(
        f"select distinct to_char(posting_date, 'YYYY-MM') from {MARTS}.fct_journal_lines order by 1 desc"
    ).fetchall()
    return [r[0] for r in rows]


def staged_groups(conn: psycopg.Connection, first: date, last: date) -> tuple[list[dict], list[dict]]:
    """Counts and Σ amount per (reporting_category, type, currency), and per fee type, created in [first, last]."""
    with conn.cursor(row_factory=dict_row) as cur:
        groups = cur.execute(
            f"select coalesce(reporting_category, '') as reporting_category, balance_transaction_type, currency,"
            f" count(*) as n, sum(amount)::bigint as amount from {STAGING_VIEWS}.stg_stripe__balance_transactions"
            " where (created_at at time zone 'UTC')::date between %s and %s group by 1, 2, 3 order by 1, 2, 3",
            (first, last),
        ).fetchall()
        fees = []
        if _exists(conn, f"{INTERMEDIATE}.int_balance_transactions__classified"):
            fees = cur.execute(
                f"select coalesce(fd ->> 'type', '(not itemised)') as fee_type, c.accounting_category, c.currency,"
                f" count(*) as n, sum((fd ->> 'amount')::bigint)::bigint as amount"
                f" from {INTERMEDIATE}.int_balance_transactions__classified as c"
                " cross join lateral jsonb_array_elements(c.fee_details) as fd"
                " where (c.created_at at time zone 'UTC')::date between %s and %s group by 1, 2, 3 order by 1, 2, 3",
                (first, last),
            ).fetchall()
    return groups, fees


def month_data(conn: psycopg.Connection, month: str) -> MonthData:
    """The month's journal lines (both modes), the transactions that can land in it, payouts, ledger state."""
    first, last = month_bounds(month)
    # A transaction's detail date moves with activity_date and the time zone; a summary entry takes
    # its payout's members whenever they were created. Read a margin, filter by the rules' dates.
    lo, hi = first - timedelta(days=40), last + timedelta(days=40)
    with conn.cursor(row_factory=dict_row) as cur:
        lines = cur.execute(
            f"select entry_id, posting_mode, entry_type, external_ref, posting_date, account_code, debit, credit,"
            f" currency, is_unmapped, stripe_account, payout_id, balance_transaction_id"
            f" from {MARTS}.fct_journal_lines where posting_date between %s and %s",
            (first, last),
        ).fetchall()
        payout_keys = sorted(
            {
                (ln["stripe_account"], ln["payout_id"])
                for ln in lines
                if ln["payout_id"] and ln["entry_type"] != "balance_transaction"
            }
        )
        txns = cur.execute(
            f"select c.stripe_account, c.balance_transaction_id, c.created_at, c.available_at, c.amount, c.fee, c.net,"
            f" c.currency, c.exchange_rate, c.balance_transaction_type, c.reporting_category, c.charge_id, c.invoice_id,"
            f" c.presentment_currency, c.fee_details, c.payout_id, c.posting_date, c.accounting_category,"
            f" c.leg_accounts, c.leg_amounts, c.related_charge_id, ch.amount as charge_amount,"
            f" ch.currency as charge_currency, ch.metadata as charge_metadata, inv.tax_amount as invoice_tax"
            f" from {INTERMEDIATE}.int_balance_transactions__classified as c"
            # The charge itself, or the one a refund / dispute reverses (its tax is reversed pro rata).
            f" left join {STAGING_VIEWS}.stg_stripe__charges as ch"
            "   on ch.stripe_account = c.stripe_account and ch.charge_id = c.related_charge_id"
            f" left join {STAGING_VIEWS}.stg_stripe__invoices as inv"
            "   on inv.stripe_account = c.stripe_account and inv.invoice_id = c.invoice_id"
            " where c.created_at between %s and %s or c.available_at between %s and %s"
            "   or (c.stripe_account, c.payout_id) in (select * from unnest(%s::text[], %s::text[]))",
            (lo, hi, lo, hi, [k[0] for k in payout_keys], [k[1] for k in payout_keys]),
        ).fetchall()
        payouts = {
            (r["stripe_account"], r["payout_id"]): r
            for r in cur.execute(
                f"select stripe_account, payout_id, payout_amount as amount, currency, arrival_date,"
                f" reconciliation_status from {MARTS}.fct_payout_reconciliation"
                " where (stripe_account, payout_id) in (select * from unnest(%s::text[], %s::text[]))",
                ([k[0] for k in payout_keys], [k[1] for k in payout_keys]),
            ).fetchall()
        }
        posted: dict[str, str] = {}
        if _exists(conn, "sage_sync.posting_ledger"):
            refs = sorted({ln["external_ref"] for ln in lines})
            for r in cur.execute(
                "select distinct on (external_ref) external_ref, status from sage_sync.posting_ledger"
                " where resource = 'journal-entries' and external_ref = any(%s)"
                " order by external_ref, version desc",
                (refs,),
            ).fetchall():
                posted[r["external_ref"]] = r["status"]
    # Keep only transactions whose payout or date can matter (the margin query may read more).
    return MonthData(first, last, [dict(t) for t in txns], payouts, [dict(x) for x in lines], posted)


def classified_legs(txn: dict[str, Any]) -> dict[str, int]:
    """The legs dbt computed for one classified transaction (its leg arrays), netted, zeros dropped."""
    out: dict[str, int] = {}
    for a, v in zip(txn.get("leg_accounts") or [], txn.get("leg_amounts") or [], strict=True):
        if v:
            out[a] = out.get(a, 0) + int(v)
    return {a: v for a, v in out.items() if v}
