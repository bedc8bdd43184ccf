"""The staging tables: one per Stripe object, typed columns plus the raw JSON.

Each table is declared once here; the DDL, the row conversion and the required-field check all
come from the same declaration, so a column cannot drift between them. Amounts are integer minor
units (bigint), timestamps are timestamptz (UTC), ids of related objects are kept as `<name>_id`.
Every table's key includes `stripe_account` ('' for the platform account) so that Connect
accounts never collide.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SCHEMA = "stripe_staging"

# Stripe API versions from 2025-03-31.basil on are not additive: Charge.invoice, Invoice.charge,
# Invoice.payment_intent, Invoice.tax and Invoice.total_tax_amounts are gone (invoice payments are
# InvoicePayment objects under the includable `invoice.payments`, taxes are `total_taxes`).
CURRENT_SHAPES_SINCE = "2025-03-31"


def has_current_shapes(api_version: str | None) -> bool:
    """True when objects read at `api_version` have the shapes of 2025-03-31.basil and later."""
    return bool(api_version) and str(api_version)[:10] >= CURRENT_SHAPES_SINCE


try:  # orjson serialises a page's raw JSON several times faster; the jsonb Postgres stores is the same
    import orjson

    def _dumps(value: Any) -> str:
        return orjson.dumps(value).decode()
except ImportError:  # pragma: no cover - depends on the environment

    def _dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))


class MalformedObject(ValueError):
    """A Stripe object that lacks a field the pipeline relies on, or carries a value of the wrong type."""

    def __init__(self, object_type: str, object_id: str | None, field: str, problem: str):
        self.object_type, self.object_id, self.field, self.problem = object_type, object_id, field, problem
        super().__init__(f"{object_type} {object_id or '<no id>'}: field '{field}' {problem}")


@dataclass(frozen=True)
class Column:
    """A typed staging column and how it is read from the Stripe object."""

    name: str
    pgtype: str
    path: str  # dotted path in the Stripe JSON; `a|b` reads b when a is absent or null (older/newer shapes)
    kind: str = "text"  # text | int | bool | ts | ref | json | numeric
    required: bool = False


@dataclass(frozen=True)
class Table:
    """A staging table for one Stripe object type."""

    name: str  # table name in stripe_staging, also the asset key's last part
    object_type: str  # Stripe's `object` value
    list_path: str  # /v1/... list endpoint
    columns: tuple[Column, ...]
    # Includable fields that must be requested (`expand[]`) at current API versions, e.g. the
    # invoice's `payments` (the only link from an invoice to the payment intent / charge since basil).
    includes: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, ...]:
        return ("stripe_account", "id")

    def ddl(self) -> str:
        cols = ",\n  ".join(f"{c.name} {c.pgtype}" + (" not null" if c.required else "") for c in self.columns)
        return (
            f"create table if not exists {SCHEMA}.{self.name} (\n  stripe_account text not null default '',\n  {cols},\n"
            f"  raw jsonb not null,\n  _api_version text,\n  _extracted_at timestamptz not null default now(),\n"
            f"  primary key (stripe_account, id)\n)"
        )

    @property
    def column_names(self) -> list[str]:
        return ["stripe_account", *(c.name for c in self.columns), "raw", "_api_version", "_extracted_at"]


_MISSING = object()


def _ts(v: Any) -> datetime:
    return datetime.fromtimestamp(int(v), tz=UTC)


def _int(v: Any) -> int:
    # bool is an int in Python; an amount of True is a malformed object, not 1 cent.
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError("must be an integer (minor units)")
    return v


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "text": lambda v: str(v),
    "int": _int,
    "bool": lambda v: bool(v),
    "ts": _ts,
    "ref": lambda v: v["id"] if isinstance(v, dict) else str(v),  # expandable: id or expanded object
    "json": _dumps,
    "numeric": lambda v: str(v),
}


def _get(obj: dict, path: str) -> Any:
    """The value at a dotted path (list positions as digits; `a|b`: the first present, non-null one)."""
    if "|" in path:
        value: Any = _MISSING
        for alternative in path.split("|"):
            value = _get(obj, alternative)
            if value is not _MISSING and value is not None:
                return value
        return value
    cur: Any = obj
    for part in path.split("."):
        if isinstance(cur, list) and part.isdigit():
            if int(part) >= len(cur):
                return _MISSING
            cur = cur[int(part)]
            continue
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _readers(table: Table) -> list[tuple[str, str | None, tuple[str, ...], Callable[[Any], Any], bool]]:
    """Per column: (path, top-level key or None, path parts, converter, required), computed once per table."""
    specs = _READERS.get(table.name)
    if specs is None:
        specs = [
            (
                c.path,
                c.path if "." not in c.path and "|" not in c.path else None,
                tuple(c.path.split(".")),
                _CONVERT[c.kind],
                c.required,
            )
            for c in table.columns
        ]
        _READERS[table.name] = specs
    return specs


_READERS: dict[str, list[tuple[str, str | None, tuple[str, ...], Callable[[Any], Any], bool]]] = {}


def to_row(
    table: Table, obj: dict, stripe_account: str, extracted_at: datetime, api_version: str | None = None
) -> tuple:
    """Convert one Stripe object (read at `api_version`) to a staging row; raise MalformedObject naming the id and field."""
    if not isinstance(obj, dict):
        raise MalformedObject(table.object_type, None, "<object>", "is not a JSON object")
    oid = obj.get("id")
    values: list[Any] = [stripe_account]
    for path, top, parts, convert, required in _readers(table):
        if top is not None:
            raw = obj.get(top, _MISSING)
        elif "|" in path:
            raw = _get(obj, path)
        else:
            raw = obj
            for part in parts:
                if not isinstance(raw, dict) or part not in raw:
                    raw = _MISSING
                    break
                raw = raw[part]
        if raw is _MISSING or raw is None:
            if required:
                raise MalformedObject(
                    table.object_type,
                    oid,
                    path,
                    "is required but missing" if raw is _MISSING else "is required but null",
                )
            values.append(None)
            continue
        try:
            values.append(convert(raw))
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise MalformedObject(table.object_type, oid, path, f"has a bad value {raw!r}: {exc}") from None
    values.append(_dumps(obj))
    values.append(api_version)
    values.append(extracted_at)
    return tuple(values)


def C(name: str, pgtype: str, path: str | None = None, kind: str | None = None, required: bool = False) -> Column:
    """Shorthand for a Column; the kind follows from the Postgres type unless given."""
    if kind is None:
        kind = {"bigint": "int", "boolean": "bool", "timestamptz": "ts", "jsonb": "json", "numeric": "numeric"}.get(
            pgtype, "text"
        )
    return Column(name, pgtype, path or name, kind, required)


ID = C("id", "text", required=True)
CREATED = C("created", "timestamptz", required=True)

TABLES: dict[str, Table] = {
    t.name: t
    for t in [
        Table(
            "customers",
            "customer",
            "/v1/customers",
            (
                ID,
                CREATED,
                C("email", "text"),
                C("name", "text"),
                C("description", "text"),
                C("phone", "text"),
                C("currency", "text"),
                C("address_line1", "text", "address.line1"),
                C("address_line2", "text", "address.line2"),
                C("address_city", "text", "address.city"),
                C("address_state", "text", "address.state"),
                C("address_postal_code", "text", "address.postal_code"),
                C("address_country", "text", "address.country"),
                C("metadata", "jsonb"),
                C("livemode", "boolean", required=True),
            ),
        ),
        Table(
            "charges",
            "charge",
            "/v1/charges",
            (
                ID,
                CREATED,
                C("amount", "bigint", required=True),
                C("amount_captured", "bigint", required=True),
                C("amount_refunded", "bigint", required=True),
                C("currency", "text", required=True),
                C("customer_id", "text", "customer", "ref"),
                C("balance_transaction_id", "text", "balance_transaction", "ref"),
                C("invoice_id", "text", "invoice", "ref"),
                C("payment_intent_id", "text", "payment_intent", "ref"),
                C("status", "text", required=True),
                C("paid", "boolean", required=True),
                C("captured", "boolean", required=True),
                C("refunded", "boolean", required=True),
                C("disputed", "boolean", required=True),
                C("description", "text"),
                C("metadata", "jsonb"),
                C("livemode", "boolean", required=True),
            ),
        ),
        Table(
            "refunds",
            "refund",
            "/v1/refunds",
            (
                ID,
                CREATED,
                C("amount", "bigint", required=True),
                C("currency", "text", required=True),
                C("charge_id", "text", "charge", "ref"),
                C("balance_transaction_id", "text", "balance_transaction", "ref"),
                C("payment_intent_id", "text", "payment_intent", "ref"),
                C("status", "text"),
                C("reason", "text"),
                C("metadata", "jsonb"),
            ),
        ),
        Table(
            "disputes",
            "dispute",
            "/v1/disputes",
            (
                ID,
                CREATED,
                C("amount", "bigint", required=True),
                C("currency", "text", required=True),
                C("charge_id", "text", "charge", "ref", required=True),
                C("payment_intent_id", "text", "payment_intent", "ref"),
                C("status", "text", required=True),
                C("reason", "text", required=True),
                C("balance_transactions", "jsonb", required=True),
                C("metadata", "jsonb"),
            ),
        ),
        Table(
            "payouts",
            "payout",
            "/v1/payouts",
            (
                ID,
                CREATED,
                C("amount", "bigint", required=True),
                C("currency", "text", required=True),
                C("arrival_date", "timestamptz", required=True),
                C("automatic", "boolean", required=True),
                C("status", "text", required=True),
                C("method", "text"),
                C("type", "text"),
                C("balance_transaction_id", "text", "balance_transaction", "ref"),
                C("failure_balance_transaction_id", "text", "failure_balance_transaction", "ref"),
                C("failure_code", "text"),
                C("failure_message", "text"),
                C("destination_id", "text", "destination", "ref"),
                C("description", "text"),
                C("metadata", "jsonb"),
            ),
        ),
        Table(
            "balance_transactions",
            "balance_transaction",
            "/v1/balance_transactions",
            (
                ID,
                CREATED,
                C("available_on", "timestamptz", required=True),
                C("amount", "bigint", required=True),
                C("fee", "bigint", required=True),
                C("net", "bigint", required=True),
                C("currency", "text", required=True),
                C("exchange_rate", "numeric"),
                C("type", "text", required=True),
                C("reporting_category", "text", required=True),
                C("source_id", "text", "source", "ref"),
                C("status", "text", required=True),
                C("description", "text"),
                C("fee_details", "jsonb", required=True),
            ),
        ),
        # charge / payment_intent: the invoice's own fields (up to 2025-03-31) or its first InvoicePayment.
        Table(
            "invoices",
            "invoice",
            "/v1/invoices",
            (
                ID,
                CREATED,
                C("customer_id", "text", "customer", "ref"),
                C("charge_id", "text", "charge|payments.data.0.payment.charge", "ref"),
                C("payment_intent_id", "text", "payment_intent|payments.data.0.payment.payment_intent", "ref"),
                C("currency", "text", required=True),
                C("status", "text"),
                C("number", "text"),
                C("subtotal", "bigint"),
                C("tax", "bigint"),
                C("total", "bigint"),
                C("amount_paid", "bigint"),
                C("total_tax_amounts", "jsonb"),
                C("lines", "jsonb"),
                C("metadata", "jsonb"),
            ),
            includes=("payments",),
        ),
    ]
}

# Not a Stripe object table: which balance transactions an automatic payout swept (GET ?payout=).
PAYOUT_BT_DDL = f"""
create table if not exists {SCHEMA}.payout_balance_transactions (
  stripe_account text not null default '',
  payout_id text not null,
  balance_transaction_id text not null,
  _extracted_at timestamptz not null default now(),
  primary key (stripe_account, payout_id, balance_transaction_id)
)"""

# Every event seen by the update path; the source of truth for "what changed after creation".
EVENTS_DDL = f"""
create table if not exists {SCHEMA}.events (
  stripe_account text not null default '',
  id text not null,
  created timestamptz not null,
  type text not null,
  object_type text,
  object_id text,
  raw jsonb not null,
  _extracted_at timestamptz not null default now(),
  primary key (stripe_account, id)
)"""

# Cursors of the update path and bookkeeping of extracted windows.
SYNC_STATE_DDL = f"""
create table if not exists {SCHEMA}._sync_state (
  stream text not null,
  stripe_account text not null default '',
  cursor_created bigint,
  cursor_id text,
  updated_at timestamptz not null default now(),
  primary key (stream, stripe_account)
)"""

# Objects that could not be staged: kept with the reason, never dropped silently.
REJECTED_DDL = f"""
create table if not exists {SCHEMA}._rejected_objects (
  stripe_account text not null default '',
  object_type text not null,
  object_id text not null,
  field text not null,
  problem text not null,
  partition_key text,
  raw jsonb,
  first_seen_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  primary key (stripe_account, object_type, object_id)
)"""


def all_ddl() -> list[str]:
    """Every statement that creates the staging schema (idempotent)."""
    stmts = [f"create schema if not exists {SCHEMA}"]
    stmts += [t.ddl() for t in TABLES.values()]
    # Tables created before the API version was kept gain the column (null: read at an unknown version).
    stmts += [f"alter table {SCHEMA}.{t.name} add column if not exists _api_version text" for t in TABLES.values()]
    stmts += [PAYOUT_BT_DDL, EVENTS_DDL, SYNC_STATE_DDL, REJECTED_DDL]
    stmts += [
        f"create index if not exists {t.name}_created_idx on {SCHEMA}.{t.name} (created)" for t in TABLES.values()
    ]
    stmts += [
        f"create index if not exists balance_transactions_source_idx on {SCHEMA}.balance_transactions (source_id)",
        f"create index if not exists payout_bt_bt_idx on {SCHEMA}.payout_balance_transactions (balance_transaction_id)",
    ]
    return stmts


def include_params(path: str, api_version: str | None, on_list: bool) -> dict[str, list[str]]:
    """The `expand[]` a request for `path` (a list endpoint, or one object under it) needs at
    `api_version` so that the staged object carries every field the pipeline reads."""
    if not has_current_shapes(api_version):
        return {}
    for table in TABLES.values():
        if table.includes and (path == table.list_path or path.startswith(table.list_path + "/")):
            is_list = on_list and path == table.list_path
            return {"expand": [f"data.{f}" if is_list else f for f in table.includes]}
    return {}
