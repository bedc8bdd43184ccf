"""Helpers for the transformation tests: put Stripe objects straight into staging, read marts."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from stripe_sage_pipeline.extract.staging import ensure_schema, upsert_objects, upsert_payout_members
from stripe_sage_pipeline.runtime.db import libpq_url

STAGED_KEYS = ("customers", "charges", "refunds", "disputes", "payouts", "balance_transactions", "invoices")


def load_stripe_objects(
    url: str, stripe: dict[str, Any], stripe_account: str = "", api_version: str = "2023-08-16"
) -> None:
    """Upsert a golden-file style `stripe` dict (objects per table + balance_transactions_by_payout),
    objects in the shapes of `api_version`."""
    with psycopg.connect(libpq_url(url)) as conn:
        ensure_schema(conn)
        for key in STAGED_KEYS:
            if stripe.get(key):
                upsert_objects(conn, key, stripe[key], stripe_account, api_version=api_version)
        for payout_id, bt_ids in (stripe.get("balance_transactions_by_payout") or {}).items():
            upsert_payout_members(conn, payout_id, bt_ids, stripe_account)
        conn.commit()


def golden(path: Path) -> dict[str, Any]:
    """The worked example as parsed JSON."""
    return json.loads(path.read_text())


def query(url: str, sql: str, params: tuple | dict | None = None) -> list[dict[str, Any]]:
    """Rows of a query as dicts."""
    with psycopg.connect(libpq_url(url)) as conn:
        cur = conn.execute(sql, params)
        cols = [c.name for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def execute(url: str, sql: str, params: tuple | dict | None = None) -> None:
    """Run one statement and commit."""
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute(sql, params)
        conn.commit()


def movement(url: str, posting_mode: str, currency: str | None = None) -> dict[str, Decimal]:
    """Net debit(+)/credit(-) movement per account in one posting mode, as exact decimals."""
    rows = query(
        url,
        "select account_code, sum(debit_amount - credit_amount) as m from finance.fct_journal_lines "
        "where posting_mode = %s and (%s::text is null or currency = %s) group by account_code",
        (posting_mode, currency, currency),
    )
    return {r["account_code"]: r["m"] for r in rows}


def bt(
    id: str,
    amount: int,
    fee: int,
    category: str,
    source: str | None,
    currency: str = "usd",
    created: int = 1783934100,
    type_: str | None = None,
    fee_details: list | None = None,
    exchange_rate: float | None = None,
) -> dict[str, Any]:
    """A Stripe-shaped balance transaction (net = amount - fee)."""
    if fee_details is None:
        fee_details = (
            [{"amount": fee, "currency": currency, "type": "stripe_fee", "description": "fee", "application": None}]
            if fee
            else []
        )
    return {
        "id": id,
        "object": "balance_transaction",
        "amount": amount,
        "fee": fee,
        "net": amount - fee,
        "currency": currency,
        "created": created,
        "available_on": created + 86400,
        "exchange_rate": exchange_rate,
        "fee_details": fee_details,
        "reporting_category": category,
        "source": source,
        "status": "available",
        "type": type_ or category,
        "description": None,
    }


def payout(
    id: str,
    amount: int,
    bt_id: str,
    arrival: int,
    status: str = "paid",
    currency: str = "usd",
    failure_bt: str | None = None,
) -> dict[str, Any]:
    """A Stripe-shaped automatic payout."""
    return {
        "id": id,
        "object": "payout",
        "amount": amount,
        "arrival_date": arrival,
        "automatic": True,
        "balance_transaction": bt_id,
        "created": arrival - 86400,
        "currency": currency,
        "failure_balance_transaction": failure_bt,
        "failure_code": "account_closed" if status == "failed" else None,
        "failure_message": None,
        "method": "standard",
        "status": status,
        "type": "bank_account",
        "metadata": {},
        "description": "STRIPE PAYOUT",
        "destination": "ba_1",
    }


def charge(
    id: str,
    amount: int,
    bt_id: str,
    currency: str = "usd",
    customer: str | None = None,
    metadata: dict | None = None,
    invoice: str | None = None,
    created: int = 1783934100,
) -> dict[str, Any]:
    """A Stripe-shaped succeeded charge."""
    return {
        "id": id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": 0,
        "balance_transaction": bt_id,
        "captured": True,
        "created": created,
        "currency": currency,
        "customer": customer,
        "description": f"Order {id}",
        "disputed": False,
        "invoice": invoice,
        "livemode": False,
        "metadata": metadata or {},
        "paid": True,
        "refunded": False,
        "status": "succeeded",
    }
