"""Turn the finance marts into Sage Pro payloads: journal entries, customers, invoices, cash receipts.

Pure functions over rows (dicts) read from `finance.*`, so they are testable without Sage or Dagster.
Amounts stay integers in minor units until `money.to_decimal_str` renders them for Sage. Each planned
item carries a content hash of what it *books* (dates, accounts, amounts, customer), not of its text:
a reworded memo is no reason to reverse an entry, a changed amount or account is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
from psycopg.rows import dict_row

from stripe_sage_pipeline.load.ledger import content_hash
from stripe_sage_pipeline.money import to_decimal_str
from stripe_sage_pipeline.transform.mapping import Mapping

JOURNAL = "ST"  # Sage source code for Stripe activity
JE = "journal-entries"
CUSTOMERS = "customers"
INVOICES = "invoices"
RECEIPTS = "cash-receipts"

# Sage customer fields, grouped as the mapping names them in `customer_sync.sage_owns`.
CUSTOMER_FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "name": ("company",),
    "email": ("email",),
    "phone": ("phone",),
    "address": ("address1", "address2", "city", "state", "zip", "country"),
}
# Text fields Sage limits; descriptive ones are cut to fit, identifiers (custno, email) never are.
CUSTOMER_TRUNCATE = {"company": 40, "phone": 20, "address1": 40, "address2": 40, "city": 20, "state": 10, "zip": 10}

# Reconciliation statuses whose payout summary may post: items complete and adding up, or a manual payout
# (it has no item list to reconcile; it sums the activity no automatic payout swept).
POSTABLE_PAYOUT_STATUSES = ("reconciled", "manual")


@dataclass
class PlannedItem:
    """One Sage record to exist: its Stripe ref, the body to post, and what it books (hashed)."""

    resource: str
    external_ref: str
    item_key: str
    partition_date: date | None
    posting_mode: str | None
    payload: dict[str, Any]
    content_hash: str
    accounts: list[tuple[str, str]] = field(default_factory=list)  # (field, glacnt) for the pre-post check
    problems: list[str] = field(default_factory=list)  # broken invariants: the partition is refused
    hold_reason: str | None = None  # not postable yet (e.g. its payout is incomplete); not an error
    depends_on: str | None = None  # e.g. the charge whose invoice a receipt applies to


def _text(value: str | None, limit: int) -> str:
    return (value or "").strip()[:limit]


def journal_lines(conn: psycopg.Connection, day: date, posting_mode: str | None = None) -> list[dict[str, Any]]:
    """fct_journal_lines of one posting date in the selected mode (or the given one), in entry order."""
    mode_sql = "is_selected_mode" if posting_mode is None else "posting_mode = %(mode)s"
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select entry_id, posting_mode, entry_type, external_ref, posting_date, line_number, account_code,"
            " debit, credit, currency, memo, is_unmapped, accounting_category, stripe_account,"
            " balance_transaction_id, payout_id, source_id, charge_id, customer_id"
            f" from finance.fct_journal_lines where posting_date = %(day)s and {mode_sql}"
            " order by entry_id, line_number",
            {"day": day, "mode": posting_mode},
        ).fetchall()


def entry_lines_by_id(conn: psycopg.Connection, entry_ids: Sequence[str]) -> list[dict[str, Any]]:
    """fct_journal_lines of the given entries (for a re-drive), whatever their date."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select entry_id, posting_mode, entry_type, external_ref, posting_date, line_number, account_code,"
            " debit, credit, currency, memo, is_unmapped, accounting_category, stripe_account,"
            " balance_transaction_id, payout_id, source_id, charge_id, customer_id"
            " from finance.fct_journal_lines where entry_id = any(%s) order by entry_id, line_number",
            (list(entry_ids),),
        ).fetchall()


def payout_status(conn: psycopg.Connection, payout_ids: Iterable[str]) -> dict[str, str]:
    """Reconciliation status per payout (reconciled, incomplete, difference, failed).

    A payout that was paid and later failed still reconciled when it was paid: its summary entry posts
    (its reversal is a separate entry), so it counts as reconciled here when complete with no difference.
    """
    ids = sorted(set(payout_ids))
    if not ids:
        return {}
    rows = conn.execute(
        "select payout_id, case when reconciliation_status = 'failed' and is_complete and difference = 0 "
        "then 'reconciled' else reconciliation_status end "
        "from finance.fct_payout_reconciliation where payout_id = any(%s)",
        (ids,),
    ).fetchall()
    return dict(rows)


def entry_problems(lines: Sequence[dict[str, Any]]) -> list[str]:
    """Invariant 3 of accounting.md for one entry: integers, one side > 0 per line, Σ debit == Σ credit."""
    problems = []
    for ln in lines:
        d, c = ln["debit"], ln["credit"]
        if not isinstance(d, int) or not isinstance(c, int) or isinstance(d, bool) or isinstance(c, bool):
            problems.append(f"line {ln['account_code']}: amounts must be integers in minor units")
        elif d < 0 or c < 0 or (d > 0) == (c > 0):
            problems.append(
                f"line {ln['account_code']}: needs exactly one non-negative side > 0 (debit {d}, credit {c})"
            )
    if len({ln["currency"] for ln in lines}) > 1:
        problems.append("lines in more than one currency")
    if len(lines) < 2:
        problems.append("fewer than two lines")
    total_d = sum(ln["debit"] for ln in lines if isinstance(ln["debit"], int))
    total_c = sum(ln["credit"] for ln in lines if isinstance(ln["credit"], int))
    if total_d != total_c:
        problems.append(f"unbalanced: debits {total_d} != credits {total_c} (minor units)")
    return problems


def _description(memo: str | None, ref: str) -> str:
    text = (memo or ref).strip()
    if not text.startswith(("Stripe", "Reversal")):
        text = f"Stripe {text}"
    return text[:60]


def plan_journal_entry(lines: Sequence[dict[str, Any]]) -> PlannedItem:
    """One balanced Sage journal entry from the mart lines of one entry_id."""
    first = lines[0]
    currency = first["currency"]
    ref = first["external_ref"]
    memo = first["memo"] or ""
    problems = entry_problems(lines)
    body_lines = []
    booked = []
    for ln in lines:
        # The line memo keeps the Stripe ids (and, from the mart, presentment amount and rate).
        line_memo = memo if ref in memo else f"{ref} {memo}"
        body_lines.append(
            {
                "glacnt": ln["account_code"],
                "debit": to_decimal_str(int(ln["debit"]), currency),
                "credit": to_decimal_str(int(ln["credit"]), currency),
                "memo": line_memo.strip()[:120],
            }
        )
        booked.append((ln["account_code"], int(ln["debit"]), int(ln["credit"])))
    payload = {
        "journal": JOURNAL,
        "posting_date": first["posting_date"].isoformat(),
        "description": _description(memo, ref),
        "reference": ref[:30],
        "currency": currency.upper(),
        "lines": body_lines,
    }
    chash = content_hash({"date": payload["posting_date"], "currency": payload["currency"], "lines": sorted(booked)})
    return PlannedItem(
        resource=JE,
        external_ref=ref,
        item_key=first["entry_id"],
        partition_date=first["posting_date"],
        posting_mode=first["posting_mode"],
        payload=payload,
        content_hash=chash,
        accounts=[(f"lines[{i}].glacnt", ln["account_code"]) for i, ln in enumerate(lines)],
        problems=problems,
    )


def plan_journal_entries(
    lines: Sequence[dict[str, Any]],
    payout_statuses: dict[str, str] | None = None,
    skip_entries: set[str] | None = None,
) -> list[PlannedItem]:
    """Journal entries from mart lines; summary entries of payouts that do not reconcile are held."""
    by_entry: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ln in lines:
        by_entry[ln["entry_id"]].append(ln)
    items = []
    for entry_id, entry_lines in by_entry.items():
        if skip_entries and entry_id in skip_entries:
            continue
        item = plan_journal_entry(entry_lines)
        first = entry_lines[0]
        if first["entry_type"] == "payout_summary" and payout_statuses is not None:
            status = payout_statuses.get(first["payout_id"])
            # Invariant 2: a payout's summary is posted only once its items are complete and add up.
            if status not in POSTABLE_PAYOUT_STATUSES:
                item.hold_reason = f"PayoutNotReconciled:{status or 'missing'}"
        items.append(item)
    return items


# -- customers -----------------------------------------------------------------------------------


def customer_rows(
    conn: psycopg.Connection, up_to: date | None = None, customer_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """dim_customers rows, created on or before `up_to` (UTC) or with the given ids."""
    where, params = [], []
    if up_to is not None:
        where.append("(created_at at time zone 'UTC')::date <= %s")
        params.append(up_to)
    if customer_ids is not None:
        where.append("customer_id = any(%s)")
        params.append(list(customer_ids))
    clause = f" where {' and '.join(where)}" if where else ""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"select * from finance.dim_customers{clause} order by customer_id", params).fetchall()


def customer_body(row: dict[str, Any]) -> dict[str, Any]:
    """The full Sage customer record for a dim_customers row (create)."""
    body: dict[str, Any] = {
        "custno": row["custno"],
        "company": row["customer_name"],
        "email": row["email"],
        "phone": row["phone"],
        "address1": row["address_line1"],
        "address2": row["address_line2"],
        "city": row["address_city"],
        "state": row["address_state"],
        "zip": row["address_postal_code"],
        "country": (row["address_country"] or "").upper() or None,
        "currency": (row["currency"] or "").upper() or None,
    }
    for key, limit in CUSTOMER_TRUNCATE.items():
        if body.get(key):
            body[key] = _text(body[key], limit)
    return {k: v for k, v in body.items() if v not in (None, "")}


def owned_fields(sage_owns: Iterable[str]) -> set[str]:
    """Sage field names covered by the mapping's `customer_sync.sage_owns` groups."""
    return {f for group in sage_owns for f in CUSTOMER_FIELD_GROUPS.get(group, ())}


def plan_customer(row: dict[str, Any], sage_owns: Iterable[str]) -> PlannedItem:
    """A customer item: the full body (used to create); the hash covers only the fields Stripe owns."""
    body = customer_body(row)
    sage_fields = owned_fields(sage_owns)
    stripe_owned = {k: v for k, v in body.items() if k not in sage_fields}
    return PlannedItem(
        resource=CUSTOMERS,
        external_ref=row["customer_id"],
        item_key=row["customer_id"],
        partition_date=None,
        posting_mode=None,
        payload=body,
        content_hash=content_hash(stripe_owned),
    )


# -- invoice-driven revenue ------------------------------------------------------------------------


def invoice_lines(
    conn: psycopg.Connection, day: date | None = None, charge_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """fct_invoice_lines of one date (or of given charges), in document order."""
    where, params = [], []
    if day is not None:
        where.append("posting_date = %s")
        params.append(day)
    if charge_ids is not None:
        where.append("charge_id = any(%s)")
        params.append(list(charge_ids))
    clause = f" where {' and '.join(where)}" if where else ""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"select * from finance.fct_invoice_lines{clause} order by document_key, line_number", params
        ).fetchall()


def plan_invoices(lines: Sequence[dict[str, Any]]) -> list[PlannedItem]:
    """A Sage invoice per charge (Dr AR / Cr revenue + tax); charges without a customer get none."""
    by_doc: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ln in lines:
        by_doc[ln["document_key"]].append(ln)
    items = []
    for doc_lines in by_doc.values():
        first = doc_lines[0]
        if not first["custno"]:
            continue
        cur = first["currency"]
        body_lines, booked = [], []
        for ln in doc_lines:
            qty, unit, amount = int(ln["quantity"]), int(ln["unit_price"]), int(ln["line_amount"])
            if qty * unit != amount:  # discounts and the like: one unit at the line amount
                qty, unit = 1, amount
            line = {
                "description": _text(ln["description"], 60) or f"Stripe charge {first['charge_id']}",
                "quantity": str(qty),
                "unit_price": to_decimal_str(unit, cur),
                "revenue_glacnt": ln["revenue_account"],
            }
            if int(ln["tax_amount"]):
                line["tax_amount"] = to_decimal_str(int(ln["tax_amount"]), cur)
                line["tax_glacnt"] = ln["sales_tax_account"]
            body_lines.append(line)
            booked.append((ln["revenue_account"], amount, ln["sales_tax_account"], int(ln["tax_amount"])))
        subtotal = sum(b[1] for b in booked)
        tax = sum(b[3] for b in booked)
        payload = {
            "doc_type": "invoice",
            "custno": first["custno"],
            "invdate": first["posting_date"].isoformat(),
            "currency": cur.upper(),
            "description": _text(f"Stripe charge {first['charge_id']}", 60),
            "reference": first["charge_id"][:30],
            "lines": body_lines,
            "totals": {
                "subtotal": to_decimal_str(subtotal, cur),
                "tax": to_decimal_str(tax, cur),
                "total": to_decimal_str(subtotal + tax, cur),
            },
        }
        accounts = [(f"lines[{i}].revenue_glacnt", ln["revenue_account"]) for i, ln in enumerate(doc_lines)]
        accounts += [
            (f"lines[{i}].tax_glacnt", ln["sales_tax_account"])
            for i, ln in enumerate(doc_lines)
            if int(ln["tax_amount"])
        ]
        problems = []
        if subtotal + tax != int(first["document_total"]):
            problems.append(
                f"invoice {first['charge_id']}: lines + tax {subtotal + tax} != total {first['document_total']}"
            )
        items.append(
            PlannedItem(
                resource=INVOICES,
                external_ref=first["charge_id"],
                item_key=first["document_key"],
                partition_date=first["posting_date"],
                posting_mode=None,
                payload=payload,
                content_hash=content_hash(
                    {"custno": first["custno"], "date": payload["invdate"], "cur": cur, "lines": sorted(booked)}
                ),
                accounts=accounts,
                problems=problems,
            )
        )
    return items


def receipt_candidates(
    lines: Sequence[dict[str, Any]], invoiced: dict[str, str], mapping: Mapping
) -> dict[str, dict[str, Any]]:
    """Charge entries (detail mode) that a cash receipt can replace: entry_id → receipt facts.

    `invoiced` maps charge_id → custno of the charges that get an invoice. A charge entry qualifies when
    its only debits are clearing (net) and at most one fee account, and its credits are the gross.
    """
    by_entry: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ln in lines:
        by_entry[ln["entry_id"]].append(ln)
    out = {}
    for entry_id, entry_lines in by_entry.items():
        first = entry_lines[0]
        if first["entry_type"] != "balance_transaction" or first["accounting_category"] != "charge":
            continue
        if first["charge_id"] not in invoiced:
            continue
        clearing = mapping.clearing_account(first["currency"])
        debits = [ln for ln in entry_lines if ln["debit"] > 0]
        credits = [ln for ln in entry_lines if ln["credit"] > 0]
        deposit = [ln for ln in debits if ln["account_code"] == clearing]
        fees = [ln for ln in debits if ln["account_code"] != clearing]
        if len(deposit) != 1 or len(fees) > 1 or not credits:
            continue
        out[entry_id] = {
            "charge_id": first["charge_id"],
            "custno": invoiced[first["charge_id"]],
            "external_ref": first["external_ref"],
            "posting_date": first["posting_date"],
            "currency": first["currency"],
            "amount": sum(int(ln["credit"]) for ln in credits),
            "fee": int(fees[0]["debit"]) if fees else 0,
            "fee_glacnt": fees[0]["account_code"] if fees else None,
            "deposit_glacnt": clearing,
        }
    return out


def plan_cash_receipt(facts: dict[str, Any], invno: str | None) -> PlannedItem:
    """A cash receipt settling a charge's invoice: Dr clearing (amount − fee), Dr fee, Cr AR amount."""
    cur = facts["currency"]
    payload: dict[str, Any] = {
        "custno": facts["custno"],
        "receipt_date": facts["posting_date"].isoformat(),
        "amount": to_decimal_str(facts["amount"], cur),
        "fee_amount": to_decimal_str(facts["fee"], cur),
        "currency": cur.upper(),
        "deposit_glacnt": facts["deposit_glacnt"],
        "receipt_type": "receipt",
        "reference": facts["charge_id"][:30],
        "description": _text(f"Stripe charge {facts['charge_id']} ({facts['external_ref']})", 60),
        "applications": [{"invno": invno, "amount": to_decimal_str(facts["amount"], cur)}] if invno else [],
    }
    if facts["fee_glacnt"]:
        payload["fee_glacnt"] = facts["fee_glacnt"]
    accounts = [("deposit_glacnt", facts["deposit_glacnt"])]
    if facts["fee_glacnt"]:
        accounts.append(("fee_glacnt", facts["fee_glacnt"]))
    return PlannedItem(
        resource=RECEIPTS,
        external_ref=facts["external_ref"],
        item_key=facts["external_ref"],
        partition_date=facts["posting_date"],
        posting_mode="detail",
        payload=payload,
        content_hash=content_hash(
            {
                k: facts[k]
                for k in ("custno", "posting_date", "currency", "amount", "fee", "fee_glacnt", "deposit_glacnt")
            }
            | {"invno": invno}
        ),
        accounts=accounts,
        hold_reason=None if invno else "InvoiceNotPosted",
        depends_on=facts["charge_id"],
    )
