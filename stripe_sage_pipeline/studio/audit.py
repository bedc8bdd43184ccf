"""Who saved which mapping and when: the `studio.mapping_audit` table, with the diff of each save."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

SCHEMA = "studio"

DDL = f"""
create schema if not exists {SCHEMA};
create table if not exists {SCHEMA}.mapping_audit (
    id bigserial primary key,
    saved_at timestamptz not null default now(),
    saved_by text not null,
    client text,
    mapping_file text not null,
    old_fingerprint text,
    new_fingerprint text not null,
    changes jsonb not null,
    diff text not null,
    transform text
);
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the audit table (idempotent)."""
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('studio.ddl'))")
        conn.execute(DDL)


def flat_changes(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """Every changed leaf between two plain mappings: [{key, old, new}] (None = absent)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[dict[str, Any]] = []
        for k in list(old) + [k for k in new if k not in old]:
            out += flat_changes(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    if old == new:
        return []
    return [{"key": path, "old": old, "new": new}]


def record_save(
    conn: psycopg.Connection,
    *,
    saved_by: str,
    client: str | None,
    mapping_file: str,
    old_fingerprint: str | None,
    new_fingerprint: str,
    changes: list[dict[str, Any]],
    diff: str,
) -> int:
    """Insert one audit row; returns its id."""
    ensure_schema(conn)
    with conn.transaction():
        row = conn.execute(
            f"insert into {SCHEMA}.mapping_audit (saved_by, client, mapping_file, old_fingerprint, new_fingerprint,"
            " changes, diff) values (%s, %s, %s, %s, %s, %s, %s) returning id",
            (saved_by, client, mapping_file, old_fingerprint, new_fingerprint, Jsonb(changes), diff),
        ).fetchone()
    return int(row[0])


def record_transform(conn: psycopg.Connection, audit_id: int, outcome: str) -> None:
    """What became of the transform the save asked for (a run id, or why none was started)."""
    with conn.transaction():
        conn.execute(f"update {SCHEMA}.mapping_audit set transform = %s where id = %s", (outcome, audit_id))


def history(conn: psycopg.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The latest saves, newest first."""
    ensure_schema(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"select * from {SCHEMA}.mapping_audit order by id desc limit %s", (limit,)).fetchall()
