"""Incremental extraction: Stripe list windows and the events-driven update path into staging.

Two ways in, both idempotent because every write is an upsert by (stripe_account, id):
* windows on `created` (one transaction per hour, so a killed run leaves whole hours or nothing);
* the update path: the Events API from a persisted cursor with a look-back, re-fetching each object
  that changed after it was created (refunds on old charges, disputes closing, payout status).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg

from stripe_sage_pipeline.extract import staging
from stripe_sage_pipeline.extract.client import StripeReader
from stripe_sage_pipeline.extract.tables import SCHEMA, TABLES, MalformedObject

log = logging.getLogger(__name__)

HOUR = 3600
EVENT_RETENTION_S = 30 * 86400  # the Events API keeps 30 days
MUTABLE_TABLES = ("charges", "refunds", "disputes", "payouts", "invoices", "customers")

# Which staging table an event's data.object belongs to.
OBJECT_TABLE = {t.object_type: t.name for t in TABLES.values()}


class ExtractionError(RuntimeError):
    """A stream failed: the message names the object and field; nothing of that window was committed."""


@dataclass
class WindowResult:
    """Rows written for one object type over a window."""

    table: str
    start: int
    end: int
    rows: int = 0
    hours: int = 0
    payout_members: int = 0
    rows_by_hour: dict[int, int] = field(default_factory=dict)


def hour_windows(start: int, end: int) -> list[tuple[int, int]]:
    """Split [start, end) into hour windows aligned to UTC hours."""
    first = start - start % HOUR
    return [(max(s, start), min(s + HOUR, end)) for s in range(first, end, HOUR) if min(s + HOUR, end) > max(s, start)]


def _record_rejection(url: str, err: MalformedObject, raw: dict | None, account: str, partition: str) -> None:
    """Keep the bad object with its reason in its own transaction: the failed window rolls back, this stays."""
    import json

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"insert into {SCHEMA}._rejected_objects (stripe_account, object_type, object_id, field, problem, partition_key, raw) "
            "values (%s, %s, %s, %s, %s, %s, %s) on conflict (stripe_account, object_type, object_id) do update set "
            "field = excluded.field, problem = excluded.problem, partition_key = excluded.partition_key, raw = excluded.raw, "
            "last_seen_at = now()",
            (account, err.object_type, err.object_id or "<no id>", err.field, err.problem, partition,
             json.dumps(raw) if raw is not None else None),
        )


def _rows_or_fail(url: str, table_name: str, objects: list[dict], account: str, label: str) -> list[tuple]:
    table = TABLES[table_name]
    try:
        return staging.rows_for(table, objects, account)
    except MalformedObject as err:
        bad = next((o for o in objects if isinstance(o, dict) and o.get("id") == err.object_id), None)
        _record_rejection(url, err, bad, account, label)
        raise ExtractionError(f"{table_name} window {label}: {err}; nothing committed for this window "
                              f"(the object is kept in {SCHEMA}._rejected_objects)") from err


def _chunks(start: int, end: int, pieces: int) -> list[tuple[int, int]]:
    """[start, end) cut into at most `pieces` hour-aligned chunks of about equal length."""
    hours = hour_windows(start, end)
    if not hours:
        return []
    per = -(-len(hours) // max(1, pieces))
    return [(hours[i][0], hours[min(i + per, len(hours)) - 1][1]) for i in range(0, len(hours), per)]


def _flush(reader: StripeReader, conn: psycopg.Connection, table_name: str, hours: dict[int, list[tuple]],
           payouts: dict[int, list[dict]], resume_key: str, lowest_done: int) -> tuple[int, int]:
    """Commit whole hours in one transaction, with the resume cursor, so a kill never leaves half an hour."""
    account = reader.stripe_account or ""
    members: dict[str, list[str]] = {}
    for objs in payouts.values():
        for po in objs:
            if po.get("automatic"):
                members[po["id"]] = [bt["id"] for bt in reader.list_all("/v1/balance_transactions", {"payout": po["id"]})]
    table = TABLES[table_name]
    rows = [r for h in sorted(hours) for r in hours[h]]
    with conn.transaction():
        staging.upsert_rows(conn, table, rows)
        n_members = sum(staging.upsert_payout_members(conn, po, bts, account) for po, bts in members.items())
        _set_cursor(conn, resume_key, account, lowest_done, None)
    return len(rows), n_members


def extract_chunk(reader: StripeReader, url: str, table_name: str, start: int, end: int) -> WindowResult:
    """Stream objects created in [start, end) newest first; commit each hour once it is complete.

    Listing is newest first, so once a page reaches an older hour every newer hour is complete. Memory
    holds one hour and one page, whatever the window's size. A resume cursor (the oldest committed hour)
    lets a killed run continue where it stopped instead of starting over.
    """
    table = TABLES[table_name]
    account = reader.stripe_account or ""
    resume_key = f"extract:{table_name}:{start}:{end}"
    conn = psycopg.connect(url, autocommit=True)  # one connection per chunk; each flush is its own transaction
    resumed_at, _ = _get_cursor(conn, resume_key, account)
    upper = resumed_at if resumed_at is not None else end
    result = WindowResult(table_name, start, end)
    hours: dict[int, list[tuple]] = {}
    payouts: dict[int, list[dict]] = {}
    lowest_done = upper

    def flush(below_hour: int | None) -> None:
        nonlocal hours, payouts, lowest_done
        done = [h for h in hours if below_hour is None or h > below_hour]
        if not done:
            return
        # Every hour at or above this one is committed: the exclusive upper bound to resume from.
        lowest_done = below_hour + HOUR if below_hour is not None else start
        n, m = _flush(reader, conn, table_name, {h: hours.pop(h) for h in done},
                      {h: payouts.pop(h) for h in done if h in payouts}, resume_key, lowest_done)
        result.rows += n
        result.payout_members += m

    with conn:
        if upper > start:
            for page, _ in reader.iter_pages(table.list_path, {"created": {"gte": start, "lt": upper}}):
                label = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(int(page[0]["created"]) if page else start))
                rows = _rows_or_fail(url, table_name, page, account, label)
                for obj, row in zip(page, rows, strict=True):
                    h = int(obj["created"]) - int(obj["created"]) % HOUR
                    hours.setdefault(h, []).append(row)
                    result.rows_by_hour[h] = result.rows_by_hour.get(h, 0) + 1
                    if table_name == "payouts":
                        payouts.setdefault(h, []).append(obj)
                if page:
                    last_hour = int(page[-1]["created"]) - int(page[-1]["created"]) % HOUR
                    flush(below_hour=last_hour)
            flush(below_hour=None)
        if resumed_at is not None or lowest_done != upper:
            conn.execute(f"delete from {SCHEMA}._sync_state where stream = %s and stripe_account = %s",
                         (resume_key, account))
    result.hours = len(hour_windows(start, end))
    return result


def extract_window(
    reader: StripeReader,
    url: str,
    table_name: str,
    start: int,
    end: int,
    workers: int = 8,
    pieces: int | None = None,
    progress: Callable[[WindowResult], None] | None = None,
) -> WindowResult:
    """Extract [start, end): a few chunks in parallel, each streamed and committed hour by hour.

    Eight workers keep a 100 req/s limit busy when a page takes ~50 ms to arrive; the shared limiter,
    not the worker count, decides the request rate.

    Chunks are few and long (not a request per empty hour): a month with a quiet year before it costs
    a handful of requests beyond the pages that carry data.
    """
    total = WindowResult(table_name, start, end)
    chunks = _chunks(start, end, pieces or workers * 2)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(chunks) or 1))) as pool:
        for res in pool.map(lambda c: extract_chunk(reader, url, table_name, *c), chunks):
            total.rows += res.rows
            total.hours += res.hours
            total.payout_members += res.payout_members
            total.rows_by_hour.update(res.rows_by_hour)
            if progress:
                progress(res)
    return total


# ---------------------------------------------------------------------------------------------
# The update path


def _get_cursor(conn: psycopg.Connection, stream: str, account: str) -> tuple[int | None, str | None]:
    row = conn.execute(
        f"select cursor_created, cursor_id from {SCHEMA}._sync_state where stream = %s and stripe_account = %s",
        (stream, account),
    ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def _set_cursor(conn: psycopg.Connection, stream: str, account: str, created: int, cursor_id: str | None) -> None:
    conn.execute(
        f"insert into {SCHEMA}._sync_state (stream, stripe_account, cursor_created, cursor_id, updated_at) "
        "values (%s, %s, %s, %s, now()) on conflict (stream, stripe_account) do update set "
        "cursor_created = excluded.cursor_created, cursor_id = excluded.cursor_id, updated_at = now()",
        (stream, account, created, cursor_id),
    )


def ensure_events_cursor(reader: StripeReader, url: str, lookback_s: int = 600) -> None:
    """Start the events cursor at Stripe's newest event the first time anything is extracted.

    Changes that happen while a long first backfill runs are then caught by the update path.
    Stripe's clock (the newest event's `created`) is used, not ours, so a skewed clock loses nothing.
    """
    account = reader.stripe_account or ""
    with psycopg.connect(url) as conn:
        if _get_cursor(conn, "events", account)[0] is not None:
            return
    newest = reader.request("/v1/events", limit=1).get("data") or []
    start = (newest[0]["created"] - lookback_s) if newest else int(time.time()) - lookback_s
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('events_cursor'))")
        if _get_cursor(conn, "events", account)[0] is None:
            _set_cursor(conn, "events", account, start, None)


@dataclass
class UpdateResult:
    """What one pass of the update path did."""

    events_listed: int = 0
    events_new: int = 0
    objects_refetched: dict[str, int] = field(default_factory=dict)
    fallback_relist: bool = False
    cursor_from: int | None = None
    cursor_to: int | None = None


def _related_bt_ids(table_name: str, obj: dict) -> list[str]:
    ids: list[str] = []
    if table_name in ("charges", "refunds", "payouts"):
        for key in ("balance_transaction", "failure_balance_transaction"):
            ref = obj.get(key)
            if ref:
                ids.append(ref["id"] if isinstance(ref, dict) else ref)
    if table_name == "disputes":
        ids += [bt["id"] if isinstance(bt, dict) else bt for bt in obj.get("balance_transactions") or []]
    return ids


def refetch_objects(reader: StripeReader, url: str, changed: dict[str, set[str]]) -> dict[str, int]:
    """Retrieve the current state of changed objects (and the balance transactions they carry) and upsert them."""
    account = reader.stripe_account or ""
    fetched: dict[str, list[dict]] = {}
    members: dict[str, list[str]] = {}
    bt_ids: set[str] = set()
    for table_name, ids in changed.items():
        table = TABLES[table_name]
        for oid in sorted(ids):
            obj = reader.retrieve(table.list_path, oid)
            fetched.setdefault(table_name, []).append(obj)
            bt_ids.update(_related_bt_ids(table_name, obj))
            if table_name == "payouts" and obj.get("automatic") and obj.get("status") in ("paid", "in_transit", "failed"):
                members[oid] = [bt["id"] for bt in reader.list_all("/v1/balance_transactions", {"payout": oid})]
    if bt_ids:
        fetched.setdefault("balance_transactions", []).extend(
            reader.retrieve("/v1/balance_transactions", b) for b in sorted(bt_ids)
        )
    rows = {t: _rows_or_fail(url, t, objs, account, "update-path") for t, objs in fetched.items()}
    with psycopg.connect(url) as conn, conn.transaction():
        for t, r in rows.items():
            staging.upsert_rows(conn, TABLES[t], r)
        for po, bts in members.items():
            staging.upsert_payout_members(conn, po, bts, account)
    return {t: len(r) for t, r in rows.items()}


def relist_recent(reader: StripeReader, url: str, since: int, until: int) -> dict[str, int]:
    """The age-guard fallback: re-list every object type that can change, created in [since, until)."""
    out: dict[str, int] = {}
    for t in MUTABLE_TABLES:
        res = extract_window(reader, url, t, since, until)
        out[t] = res.rows
    return out


def sync_events(
    reader: StripeReader,
    url: str,
    lookback_s: int = 600,
    relist_horizon_s: int = 120 * 86400,
    now: int | None = None,
) -> UpdateResult:
    """One pass of the update path: new events since the cursor (minus a look-back) → re-fetch changed objects.

    The cursor and the events move in the same transaction as nothing else: objects are upserted first,
    the cursor last, so a crash re-reads the same events (harmless: upserts) instead of skipping them.
    """
    account = reader.stripe_account or ""
    ensure_events_cursor(reader, url, lookback_s)
    with psycopg.connect(url) as conn:
        cursor_created, _ = _get_cursor(conn, "events", account)
    result = UpdateResult(cursor_from=cursor_created)
    newest = reader.request("/v1/events", limit=1).get("data") or []
    stripe_now = max(int(now or time.time()), newest[0]["created"] if newest else 0)
    since = (cursor_created or stripe_now) - lookback_s
    if since < stripe_now - EVENT_RETENTION_S + HOUR:
        # Events older than Stripe keeps may be gone: re-list what can change instead of trusting them.
        log.warning("events cursor %s is older than Stripe's 30-day retention; re-listing mutable objects", since)
        result.fallback_relist = True
        result.objects_refetched = relist_recent(reader, url, max(0, stripe_now - relist_horizon_s), stripe_now + 1)
        since = stripe_now - EVENT_RETENTION_S + HOUR
    events = reader.list_all("/v1/events", {"created": {"gte": since}})
    result.events_listed = len(events)
    with psycopg.connect(url) as conn:
        known = {
            r[0]
            for r in conn.execute(
                f"select id from {SCHEMA}.events where stripe_account = %s and id = any(%s)",
                (account, [e["id"] for e in events]),
            )
        }
    new = sorted((e for e in events if e["id"] not in known), key=lambda e: (e["created"], e["id"]))
    result.events_new = len(new)
    changed: dict[str, set[str]] = {}
    for ev in new:
        obj = (ev.get("data") or {}).get("object") or {}
        table_name = OBJECT_TABLE.get(obj.get("object", ""))
        if table_name and obj.get("id"):
            changed.setdefault(table_name, set()).add(obj["id"])
    for t, n in refetch_objects(reader, url, changed).items():
        result.objects_refetched[t] = result.objects_refetched.get(t, 0) + n
    max_created = max([e["created"] for e in events], default=cursor_created or since + lookback_s)
    with psycopg.connect(url) as conn, conn.transaction():
        _store_events(conn, new, account)
        _set_cursor(conn, "events", account, max(max_created, cursor_created or 0), new[-1]["id"] if new else None)
    result.cursor_to = max(max_created, cursor_created or 0)
    return result


def _store_events(conn: psycopg.Connection, events: Iterable[dict], account: str) -> None:
    import json

    rows = []
    for ev in events:
        obj = (ev.get("data") or {}).get("object") or {}
        rows.append((account, ev["id"], ev["created"], ev["type"], obj.get("object"), obj.get("id"),
                     json.dumps(ev, separators=(",", ":"))))
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                f"insert into {SCHEMA}.events (stripe_account, id, created, type, object_type, object_id, raw) "
                "values (%s, %s, to_timestamp(%s), %s, %s, %s, %s) on conflict do nothing",
                rows,
            )
