"""Writes to the staging tables: bulk COPY into a temporary table, then one upsert by key."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import psycopg

from stripe_sage_pipeline.extract.tables import SCHEMA, TABLES, Table, all_ddl, to_row
from stripe_sage_pipeline.settings import load_settings


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the staging schema and tables if they do not exist (idempotent, serialised by a lock)."""
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('stripe_staging_ddl'))")
        for stmt in all_ddl():
            conn.execute(stmt)


def rows_for(
    table: Table,
    objects: Iterable[dict],
    stripe_account: str = "",
    extracted_at: datetime | None = None,
    api_version: str | None = None,
) -> list[tuple]:
    """Staging rows for objects read at `api_version` (default STRIPE_API_VERSION, the version every
    reader requests), deduplicated by id (the last one wins); raises MalformedObject."""
    at = extracted_at or datetime.now(UTC)
    version = api_version or load_settings().stripe_api_version
    rows: dict[str, tuple] = {}
    for obj in objects:
        row = to_row(table, obj, stripe_account, at, version)
        rows[row[1]] = row
    return list(rows.values())


def upsert_rows(conn: psycopg.Connection, table: Table, rows: list[tuple]) -> int:
    """COPY rows into a temp table and upsert them into stripe_staging.<table> in the caller's transaction."""
    if not rows:
        return 0
    cols = table.column_names
    tmp = f"_tmp_{table.name}"
    conn.execute(
        f"create temp table if not exists {tmp} (like {SCHEMA}.{table.name} including defaults) on commit delete rows"
    )
    conn.execute(f"delete from {tmp}")  # empty unless this transaction used it already; cheaper than truncate
    collist = ", ".join(cols)
    with conn.cursor().copy(f"copy {tmp} ({collist}) from stdin") as copy:
        for row in rows:
            copy.write_row(row)
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in table.key)
    cur = conn.execute(
        f"insert into {SCHEMA}.{table.name} ({collist}) select {collist} from {tmp} "
        f"on conflict (stripe_account, id) do update set {updates}"
    )
    return cur.rowcount


def upsert_objects(
    conn: psycopg.Connection,
    table_name: str,
    objects: Iterable[dict],
    stripe_account: str = "",
    api_version: str | None = None,
) -> int:
    """Convert and upsert Stripe objects (read at `api_version`) into one staging table (caller owns the transaction)."""
    table = TABLES[table_name]
    return upsert_rows(conn, table, rows_for(table, objects, stripe_account, api_version=api_version))


def upsert_payout_members(
    conn: psycopg.Connection, payout_id: str, bt_ids: Iterable[str], stripe_account: str = ""
) -> int:
    """Record which balance transactions a payout swept (idempotent): one statement for the whole list."""
    ids = list(bt_ids)
    if not ids:
        return 0
    conn.execute(
        f"insert into {SCHEMA}.payout_balance_transactions (stripe_account, payout_id, balance_transaction_id) "
        "select %s, %s, unnest(%s::text[]) on conflict do nothing",
        (stripe_account, payout_id, ids),
    )
    return len(ids)
