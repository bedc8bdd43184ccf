"""Rules of the automation: which hour to extract, which posting days to load, what an event triggers.

Plain functions over Postgres so that sensors and schedules stay thin and these stay testable.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import psycopg

PAYOUT_EVENTS = ("payout.paid", "payout.failed", "payout.canceled")


def last_complete_hour(now: datetime) -> str:
    """Hourly partition key of the last hour that has fully elapsed (UTC)."""
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    return hour.strftime("%Y-%m-%d-%H:00")


def _exists(conn: psycopg.Connection, relation: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]


def days_to_load(conninfo: str, today: date, lookback_days: int = 2, first_day: date | None = None) -> list[date]:
    """Posting days that have journal entries Sage has not seen (no ledger row), plus the last few days.

    Re-loading a day posts only what is missing or changed, so the look-back costs a handful of
    requests and catches late changes (a reclassification, a changed mapping) near today.
    """
    with psycopg.connect(conninfo) as conn:
        if not _exists(conn, "finance.fct_journal_lines"):
            return []
        ledger = _exists(conn, "sage_sync.posting_ledger")
        unposted = "" if not ledger else (
            "and not exists (select 1 from sage_sync.posting_ledger l "
            "where l.resource = 'journal-entries' and l.external_ref = j.external_ref)"
        )
        rows = conn.execute(
            "select distinct j.posting_date from finance.fct_journal_lines j "
            f"where j.is_selected_mode {unposted} order by 1"
        ).fetchall()
        recent = conn.execute(
            "select distinct posting_date from finance.fct_journal_lines where is_selected_mode "
            "and posting_date between %s and %s",
            (today - timedelta(days=lookback_days), today),
        ).fetchall()
    days = sorted({r[0] for r in rows} | {r[0] for r in recent})
    return [d for d in days if d <= today and (first_day is None or d >= first_day)]


def payout_days(conninfo: str, payout_ids: Iterable[str]) -> list[date]:
    """Arrival days (UTC) of payouts, where their bank legs post."""
    ids = list(payout_ids)
    if not ids:
        return []
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "select distinct (arrival_date at time zone 'UTC')::date from stripe_staging.payouts where id = any(%s)", (ids,)
        ).fetchall()
    return sorted(r[0] for r in rows)


def split_events(events: list[dict]) -> tuple[list[dict], list[dict]]:
    """(payout status events, everything else) from inbox rows."""
    payouts = [e for e in events if e["event_type"] in PAYOUT_EVENTS]
    others = [e for e in events if e["event_type"] not in PAYOUT_EVENTS]
    return payouts, others
