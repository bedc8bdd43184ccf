"""Helpers shared by the extraction tests: a generated emulator and staging snapshots."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from stripe_sage_pipeline.extract.tables import SCHEMA, TABLES
from stripe_sage_pipeline.runtime.db import libpq_url

HOUR = 3600


def window_of(summary: dict) -> tuple[int, int]:
    """[first hour, last hour + 1h) covering every object the emulator serves."""
    hours = [h for per in summary["counts_by_hour"].values() for h in per]
    first = datetime.strptime(min(hours), "%Y-%m-%dT%H").replace(tzinfo=UTC)
    last = datetime.strptime(max(hours), "%Y-%m-%dT%H").replace(tzinfo=UTC)
    return int(first.timestamp()), int(last.timestamp()) + HOUR


def partition_key(ts: int) -> str:
    """Dagster hourly partition key of an epoch."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d-%H:00")


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every staging row (without _extracted_at), ordered, per table: equal snapshots mean equal staging."""
    out: dict[str, list[tuple]] = {}
    with psycopg.connect(libpq_url(url)) as conn:
        for name, table in TABLES.items():
            cols = ", ".join(c for c in table.column_names if c != "_extracted_at")
            out[name] = conn.execute(f"select {cols} from {SCHEMA}.{name} order by stripe_account, id").fetchall()
        out["payout_balance_transactions"] = conn.execute(
            f"select stripe_account, payout_id, balance_transaction_id from {SCHEMA}.payout_balance_transactions order by 1, 2, 3"
        ).fetchall()
    return out


def counts(url: str) -> dict[str, int]:
    """Rows per staging table."""
    with psycopg.connect(libpq_url(url)) as conn:
        return {t: conn.execute(f"select count(*) from {SCHEMA}.{t}").fetchone()[0] for t in TABLES}
