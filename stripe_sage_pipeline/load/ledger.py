"""The posting ledger in `sage_sync`: what was computed, posted, dead-lettered or reversed in Sage Pro.

One row per (resource, external_ref, version). `external_ref` is the Stripe id of the source item
(`txn_…`, `po_…`, `cus_…`, `ch_…`); `sage_ref` is the external_ref actually sent to Sage, which
carries the version from v2 on (`txn_…~v2`) because Sage keeps a ref unique even after a reversal.

    computed ──POST──▶ posted ──content changed──▶ reversed (then version + 1 is computed)
        └──422───────▶ dead_lettered ──re-drive (attempt + 1)──▶ posted

A row is written as `computed` with its payload and idempotency key *before* the request, so a run
killed mid-request resends the same body under the same key and Sage replays instead of posting twice.
A 422 is stored by Sage under its key too, so a re-drive uses the next `attempt` (a new key): nothing
was committed, and the external_ref still guards against a duplicate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from stripe_sage_pipeline.sage.keys import idempotency_key

SCHEMA = "sage_sync"
MAX_REF = 64

DDL = f"""
create schema if not exists {SCHEMA};
create table if not exists {SCHEMA}.posting_ledger (
    resource text not null,
    external_ref text not null,
    version integer not null check (version >= 1),
    item_key text not null,
    sage_ref text not null,
    partition_date date,
    posting_mode text,
    status text not null check (status in ('computed', 'posted', 'dead_lettered', 'reversed')),
    content_hash text not null,
    payload jsonb not null,
    attempt integer not null default 1,
    idempotency_key text not null,
    sage_id text,
    request_id text,
    post_outcome text,
    posted_at timestamptz,
    reason text,
    error_message text,
    details jsonb,
    dead_lettered_at timestamptz,
    reversal_sage_id text,
    reversal_ref text,
    reversal_request_id text,
    reversed_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (resource, external_ref, version),
    unique (resource, sage_ref)
);
create index if not exists posting_ledger_partition on {SCHEMA}.posting_ledger (resource, partition_date, status);
create index if not exists posting_ledger_status on {SCHEMA}.posting_ledger (status) where status <> 'posted';
create table if not exists {SCHEMA}.dead_letter_history (
    id bigserial primary key,
    resource text not null,
    external_ref text not null,
    version integer not null,
    attempt integer not null,
    partition_date date,
    reason text not null,
    error_message text,
    details jsonb,
    request_id text,
    record jsonb,
    dead_lettered_at timestamptz not null default now(),
    resolved_at timestamptz,
    resolution text
);
create table if not exists {SCHEMA}.sync_cursors (
    name text primary key,
    value text not null,
    updated_at timestamptz not null default now()
);
create table if not exists {SCHEMA}.customer_sync_state (
    customer_id text primary key,
    custno text not null,
    sage_owned_hash text,
    stripe_told_hash text,
    sage_updated_at text,
    updated_at timestamptz not null default now()
);
create or replace view {SCHEMA}.dead_letters as
select
    l.resource,
    l.external_ref,
    l.version,
    l.sage_ref,
    l.partition_date,
    l.item_key,
    d.value ->> 'field' as field,
    coalesce(d.value ->> 'code', l.reason) as reason,
    coalesce(d.value ->> 'message', l.error_message) as message,
    l.error_message,
    l.request_id,
    l.attempt,
    l.payload as record,
    l.dead_lettered_at
from {SCHEMA}.posting_ledger as l
left join lateral jsonb_array_elements(coalesce(l.details, '[]'::jsonb)) as d (value) on true
where l.status = 'dead_lettered';
"""

LEDGER_COLUMNS = (
    "resource",
    "external_ref",
    "version",
    "item_key",
    "sage_ref",
    "partition_date",
    "posting_mode",
    "status",
    "content_hash",
    "payload",
    "attempt",
    "idempotency_key",
    "sage_id",
    "request_id",
    "post_outcome",
    "posted_at",
    "reason",
    "error_message",
    "details",
    "dead_lettered_at",
    "reversal_sage_id",
    "reversal_ref",
    "reversal_request_id",
    "reversed_at",
)


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the ledger tables and the dead_letters view (idempotent, serialised by an advisory lock)."""
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('sage_sync.ddl'))")
        conn.execute(DDL)


def content_hash(value: Any) -> str:
    """Stable 16-hex hash of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[
        :16
    ]


def versioned_ref(base: str, version: int, marker: str = "v") -> str:
    """The external_ref sent to Sage: the Stripe id for v1, `id~v2`, … after; reversals `id~r1`, … (≤ 64)."""
    if marker == "v" and version == 1:
        ref = base
    else:
        ref = f"{base}~{marker}{version}"
    if len(ref) <= MAX_REF:
        return ref
    suffix = ref[len(base) :]
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[: MAX_REF - len(suffix) - 9]}.{digest}{suffix}"


def item_idempotency_key(resource: str, sage_ref: str, chash: str, attempt: int) -> str:
    """Key of one attempt to create an item: same content and attempt → same key on every retry."""
    return idempotency_key(resource, sage_ref, f"{chash}:{attempt}")


@dataclass
class LedgerRow:
    """One version of one item as the ledger holds it."""

    resource: str
    external_ref: str
    version: int
    item_key: str
    sage_ref: str
    partition_date: date | None
    posting_mode: str | None
    status: str
    content_hash: str
    payload: dict[str, Any]
    attempt: int
    idempotency_key: str
    sage_id: str | None = None
    request_id: str | None = None
    post_outcome: str | None = None
    posted_at: Any = None
    reason: str | None = None
    error_message: str | None = None
    details: Any = None
    dead_lettered_at: Any = None
    reversal_sage_id: str | None = None
    reversal_ref: str | None = None
    reversal_request_id: str | None = None
    reversed_at: Any = None


def _row(d: dict[str, Any]) -> LedgerRow:
    return LedgerRow(**{k: d[k] for k in LEDGER_COLUMNS})


def current_versions(conn: psycopg.Connection, resource: str, refs: Iterable[str]) -> dict[str, LedgerRow]:
    """The latest version of each external_ref of `resource` that the ledger knows."""
    refs = list(refs)
    if not refs:
        return {}
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"select distinct on (external_ref) * from {SCHEMA}.posting_ledger"
            " where resource = %s and external_ref = any(%s) order by external_ref, version desc",
            (resource, refs),
        ).fetchall()
    return {r["external_ref"]: _row(r) for r in rows}


def rows_where(conn: psycopg.Connection, where: str, params: Sequence[Any] = ()) -> list[LedgerRow]:
    """Ledger rows matching a SQL condition (for sweeps and re-drives)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"select * from {SCHEMA}.posting_ledger where {where} order by resource, external_ref, version", params
        ).fetchall()
    return [_row(r) for r in rows]


def insert_computed(conn: psycopg.Connection, rows: Sequence[LedgerRow]) -> None:
    """Record the intent to post (payload and key) before any request goes out; one transaction."""
    if not rows:
        return
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            f"insert into {SCHEMA}.posting_ledger (resource, external_ref, version, item_key, sage_ref,"
            " partition_date, posting_mode, status, content_hash, payload, attempt, idempotency_key)"
            " values (%s, %s, %s, %s, %s, %s, %s, 'computed', %s, %s, %s, %s)"
            " on conflict (resource, external_ref, version) do nothing",
            [
                (
                    r.resource,
                    r.external_ref,
                    r.version,
                    r.item_key,
                    r.sage_ref,
                    r.partition_date,
                    r.posting_mode,
                    r.content_hash,
                    Jsonb(r.payload),
                    r.attempt,
                    r.idempotency_key,
                )
                for r in rows
            ],
        )


def replace_attempt(conn: psycopg.Connection, row: LedgerRow) -> None:
    """Store a new payload/attempt/key on a row that was never committed in Sage (computed or dead-lettered)."""
    with conn.transaction():
        conn.execute(
            f"update {SCHEMA}.posting_ledger set status = 'computed', content_hash = %s, payload = %s, attempt = %s,"
            " idempotency_key = %s, partition_date = %s, posting_mode = %s, item_key = %s, updated_at = now()"
            " where resource = %s and external_ref = %s and version = %s and status in ('computed', 'dead_lettered')",
            (
                row.content_hash,
                Jsonb(row.payload),
                row.attempt,
                row.idempotency_key,
                row.partition_date,
                row.posting_mode,
                row.item_key,
                row.resource,
                row.external_ref,
                row.version,
            ),
        )


def mark_posted(conn: psycopg.Connection, row: LedgerRow, sage_id: str, request_id: str, outcome: str) -> None:
    """computed → posted, with the Sage id and the request id; resolves any open dead letter of the row."""
    with conn.transaction():
        conn.execute(
            f"update {SCHEMA}.posting_ledger set status = 'posted', sage_id = %s, request_id = %s, post_outcome = %s,"
            " posted_at = now(), updated_at = now() where resource = %s and external_ref = %s and version = %s",
            (sage_id, request_id, outcome, row.resource, row.external_ref, row.version),
        )
        conn.execute(
            f"update {SCHEMA}.dead_letter_history set resolved_at = now(), resolution = %s"
            " where resource = %s and external_ref = %s and version = %s and resolved_at is null",
            (f"posted as {sage_id}", row.resource, row.external_ref, row.version),
        )


def mark_dead_lettered(
    conn: psycopg.Connection,
    row: LedgerRow,
    reason: str,
    message: str,
    details: list[dict[str, Any]] | None,
    request_id: str | None,
) -> None:
    """computed → dead_lettered with the reason and details (and a line in the history)."""
    with conn.transaction():
        conn.execute(
            f"update {SCHEMA}.posting_ledger set status = 'dead_lettered', reason = %s, error_message = %s,"
            " details = %s, request_id = %s, dead_lettered_at = now(), updated_at = now()"
            " where resource = %s and external_ref = %s and version = %s",
            (reason, message, Jsonb(details or []), request_id, row.resource, row.external_ref, row.version),
        )
        conn.execute(
            f"insert into {SCHEMA}.dead_letter_history (resource, external_ref, version, attempt, partition_date,"
            " reason, error_message, details, request_id, record) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                row.resource,
                row.external_ref,
                row.version,
                row.attempt,
                row.partition_date,
                reason,
                message,
                Jsonb(details or []),
                request_id,
                Jsonb(row.payload),
            ),
        )


def mark_reversed(
    conn: psycopg.Connection,
    row: LedgerRow,
    reversal_sage_id: str | None,
    reversal_ref: str | None,
    request_id: str | None,
) -> None:
    """posted → reversed (the reversal's Sage id and ref kept on the row)."""
    with conn.transaction():
        conn.execute(
            f"update {SCHEMA}.posting_ledger set status = 'reversed', reversal_sage_id = %s, reversal_ref = %s,"
            " reversal_request_id = %s, reversed_at = now(), updated_at = now()"
            " where resource = %s and external_ref = %s and version = %s",
            (reversal_sage_id, reversal_ref, request_id, row.resource, row.external_ref, row.version),
        )


def get_cursor(conn: psycopg.Connection, name: str) -> str | None:
    """A persisted sync cursor, or None."""
    row = conn.execute(f"select value from {SCHEMA}.sync_cursors where name = %s", (name,)).fetchone()
    return row[0] if row else None


def set_cursor(conn: psycopg.Connection, name: str, value: str) -> None:
    """Persist a sync cursor."""
    with conn.transaction():
        conn.execute(
            f"insert into {SCHEMA}.sync_cursors (name, value) values (%s, %s)"
            " on conflict (name) do update set value = excluded.value, updated_at = now()",
            (name, value),
        )


def dead_letters(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The dead_letters view as dicts (one row per failing field)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"select * from {SCHEMA}.dead_letters order by resource, external_ref, field").fetchall()
