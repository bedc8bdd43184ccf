"""Incremental extraction: Stripe list windows and the events-driven update path into staging.

Two ways in, both idempotent because every write is an upsert by (stripe_account, id):
* windows on `created` (one transaction per hour, so a killed run leaves whole hours or nothing);
* the update path: the Events API from a persisted cursor with a look-back, re-fetching each object
  that changed after it was created (refunds on old charges, disputes closing, payout status).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg

from stripe_sage_pipeline.extract import concurrency, staging
from stripe_sage_pipeline.extract.client import StripeReader
from stripe_sage_pipeline.extract.tables import SCHEMA, TABLES, MalformedObject
from stripe_sage_pipeline.runtime.gc_policy import fewer_gc_pauses

log = logging.getLogger(__name__)

HOUR = 3600
CUT_STEP = 600  # a running chunk is cut on a ten-minute boundary (an hour of peak charges is a page or more)
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
    # Malformed objects met (each kept in _rejected_objects): their hour is not committed, the rest is.
    rejected: list[str] = field(default_factory=list)


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
            (
                account,
                err.object_type,
                err.object_id or "<no id>",
                err.field,
                err.problem,
                partition,
                json.dumps(raw) if raw is not None else None,
            ),
        )


def _hour_label(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(ts - ts % HOUR))


def _rows_keeping_bad(
    url: str, table_name: str, objects: list[dict], account: str, api_version: str
) -> tuple[list[tuple[dict, tuple]], list[tuple[dict, MalformedObject]]]:
    """(object, row) for every well-formed object of a page, and (object, error) for each malformed one;
    the malformed ones are kept in `_rejected_objects` under the hour they were created in."""
    table = TABLES[table_name]
    try:
        return list(zip(objects, staging.rows_for(table, objects, account, api_version=api_version), strict=True)), []
    except MalformedObject:
        pass  # one at a time, to tell the good from the bad
    good, bad = [], []
    for obj in objects:
        try:
            good.append((obj, staging.rows_for(table, [obj], account, api_version=api_version)[0]))
        except MalformedObject as err:
            created = obj.get("created") if isinstance(obj, dict) else None
            label = _hour_label(int(created)) if isinstance(created, int) else "unknown hour"
            _record_rejection(url, err, obj if isinstance(obj, dict) else None, account, label)
            bad.append((obj, err))
    return good, bad


def _rows_or_fail(
    url: str, table_name: str, objects: list[dict], account: str, label: str, api_version: str
) -> list[tuple]:
    table = TABLES[table_name]
    try:
        return staging.rows_for(table, objects, account, api_version=api_version)
    except MalformedObject as err:
        bad = next((o for o in objects if isinstance(o, dict) and o.get("id") == err.object_id), None)
        _record_rejection(url, err, bad, account, label)
        raise ExtractionError(
            f"{table_name} window {label}: {err}; nothing committed for this window "
            f"(the object is kept in {SCHEMA}._rejected_objects)"
        ) from err


def _chunks(start: int, end: int, pieces: int) -> list[tuple[int, int]]:
    """[start, end) cut into at most `pieces` hour-aligned chunks of about equal length."""
    hours = hour_windows(start, end)
    if not hours:
        return []
    per = -(-len(hours) // max(1, pieces))
    return [(hours[i][0], hours[min(i + per, len(hours)) - 1][1]) for i in range(0, len(hours), per)]


def _payout_members(reader: StripeReader, payout_id: str) -> list[str]:
    """Which balance transactions a payout swept (GET ?payout=, all pages)."""
    return [bt["id"] for bt in reader.list_all("/v1/balance_transactions", {"payout": payout_id})]


def _flush(
    reader: StripeReader,
    conn: psycopg.Connection,
    table_name: str,
    hours: dict[int, list[tuple]],
    payouts: dict[int, list[tuple[str, Future | None]]],
    resume_key: str,
    lowest_done: int,
) -> tuple[int, int]:
    """Commit whole hours in one transaction, with the resume cursor, so a kill never leaves half an hour.

    `payouts` are the hours' automatic payouts with their membership listing, already under way when a
    pool was given (started as soon as the payout's page arrived), else listed here.
    """
    account = reader.stripe_account or ""
    members = {
        po: fut.result() if fut is not None else _payout_members(reader, po)
        for objs in payouts.values()
        for po, fut in objs
    }
    table = TABLES[table_name]
    rows = [r for h in sorted(hours) for r in hours[h]]
    with conn.transaction():
        staging.upsert_rows(conn, table, rows)
        n_members = sum(staging.upsert_payout_members(conn, po, bts, account) for po, bts in members.items())
        _set_cursor(conn, resume_key, account, lowest_done, None)
    return len(rows), n_members


class Span:
    """A running chunk's range that an idle worker may cut in two (work stealing at the end of a window).

    The chunk lists [start, end) newest first and has consumed every object down to `at`. `cut` lowers
    nothing the chunk already holds: it raises `lower` to a `CUT_STEP` boundary below `at`, so the chunk
    stops there and [start, lower) becomes a chunk of its own. The chunk reads `lower` and moves `at` under
    the same lock, so no object is listed by both. An hour cut in two is committed in two parts, each by
    its own chunk, as each chunk commits the hours it holds.
    """

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end
        self.lower = start
        self.top = end  # where the listing started (below `end` when resumed)
        self.at = end  # created of the oldest object consumed (end: none yet)
        self.pages = 0  # pages consumed
        self.marks: deque[int] = deque(maxlen=4)  # `at` after each of the last full pages
        self.finished = False
        self.lock = threading.Lock()

    def pages_left(self, density: float) -> float:
        """Pages still to list down to `lower`: at the density of this chunk's last three full pages (activity
        follows the time of day, so the chunk's average misjudged the hours just below: chunks left uncut
        with three pages to go were the window's tail), else of all it has seen, else at `density`."""
        with self.lock:
            seen = self.top - self.at
            if self.pages >= 2 and seen > 0:
                density = self.pages / seen
            if len(self.marks) >= 3 and self.marks[0] > self.marks[-1]:
                density = (len(self.marks) - 1) / (self.marks[0] - self.marks[-1])
            return (self.at - self.lower) * density

    def cut(self, min_seconds: int) -> tuple[int, int] | None:
        """Give away the older half of what is left, on a `CUT_STEP` boundary, if each half spans `min_seconds`."""
        with self.lock:
            if self.finished:
                return None
            top = self.at - self.at % CUT_STEP  # the ten minutes being read stay with this chunk
            mid = self.lower + (top - self.lower) // 2
            mid -= mid % CUT_STEP
            if mid - self.lower < max(CUT_STEP, min_seconds) or top - mid < max(CUT_STEP, min_seconds):
                return None
            piece = (self.lower, mid)
            self.lower = mid
            return piece

    def keep(self, page: list[dict]) -> tuple[list[dict], bool]:
        """The page's objects at or above `lower` (and any without a `created`), and whether to stop here."""
        with self.lock:
            kept = [o for o in page if (c := _created_or_none(o)) is None or c >= self.lower]
            self.pages += 1
            dated = [c for c in (_created_or_none(o) for o in kept) if c is not None]
            if dated:
                self.at = min(self.at, dated[-1])
            if len(kept) == len(page):
                self.marks.append(self.at)
            stop = len(kept) < len(page)
            if stop:
                self.finished = True
            return kept, stop

    def close(self) -> int:
        """The chunk's listing ended: no more cuts; the lower bound it covered."""
        with self.lock:
            self.finished = True
            return self.lower


def extract_chunk(
    reader: StripeReader,
    url: str,
    table_name: str,
    start: int,
    end: int,
    first_page: FirstPage | None = None,
    pool: Executor | None = None,
    span: Span | None = None,
    cursors: dict[str, int] | None = None,
    on_page: Callable[[], None] | None = None,
) -> WindowResult:
    """Stream objects created in [start, end) newest first; commit each hour once it is complete.

    Listing is newest first, so once a page reaches an older hour every newer hour is complete. Memory
    holds one hour and one page, whatever the window's size. A resume cursor (the oldest committed hour)
    lets a killed run continue where it stopped instead of starting over. `first_page`, when given, is
    this chunk's first page already fetched (the window's probe); `pool` lists payout memberships.
    `span`, when given, lets another worker take the chunk's older part (`Span.cut`): the chunk then
    stops at the cut and leaves its resume cursor there, so a killed run re-reads the part given away.
    `cursors` are the window's resume cursors read at once (`_resume_cursors`); None: read this one.
    `on_page` is called after each page (the window uses it to cut chunks for idle workers).
    """
    table = TABLES[table_name]
    account = reader.stripe_account or ""
    resume_key = f"extract:{table_name}:{start}:{end}"
    if cursors is None:
        with psycopg.connect(url, autocommit=True) as c:
            resumed_at, _ = _get_cursor(c, resume_key, account)
    else:
        resumed_at = cursors.get(resume_key)
    upper = resumed_at if resumed_at is not None else end
    # One connection per chunk, each flush its own transaction; opened at the first flush, so that a
    # window's chunks do not all wait on Postgres starting their backends before their first request.
    opened: list[psycopg.Connection] = []

    def db() -> psycopg.Connection:
        if not opened:
            opened.append(psycopg.connect(url, autocommit=True))
        return opened[0]

    result = WindowResult(table_name, start, end)
    hours: dict[int, list[tuple]] = {}
    payouts: dict[int, list[tuple[str, Future | None]]] = {}
    lowest_done = upper

    bad_hours: set[int] = set()

    def flush(below_hour: int | None, final: bool = False) -> None:
        nonlocal hours, payouts, lowest_done
        done = [h for h in hours if below_hour is None or h > below_hour]
        for h in [h for h in done if h in bad_hours]:  # an hour with a malformed object commits nothing
            done.remove(h)
            hours.pop(h)
            payouts.pop(h, None)
        if below_hour is not None and not final:
            # Mid-stream, an hour whose payout memberships are still being listed waits (with every
            # older hour) for a later flush, so the next page is not held up by those listings.
            waiting = [h for h in done if any(f is not None and not f.done() for _, f in payouts.get(h, []))]
            if waiting:
                below_hour = max(waiting)
                done = [h for h in done if h > below_hour]
        if not done:
            return
        # Every hour at or above this one is committed: the exclusive upper bound to resume from. Never
        # below a failed hour, so that a re-run (after the object is fixed) reads that hour again.
        lowest_done = below_hour + HOUR if below_hour is not None else start
        if bad_hours:
            lowest_done = max(lowest_done, min(bad_hours) + HOUR)
        n, m = _flush(
            reader,
            db(),
            table_name,
            {h: hours.pop(h) for h in done},
            {h: payouts.pop(h) for h in done if h in payouts},
            resume_key,
            lowest_done,
        )
        result.rows += n
        result.payout_members += m

    span = span or Span(start, end)
    with span.lock:
        span.at = span.top = min(span.at, upper)
    try:
        if upper > start:
            for page in _pages(reader, table.list_path, start, upper, first_page if resumed_at is None else None):
                t0 = time.monotonic()
                page, stop = span.keep(page)
                good, bad = _rows_keeping_bad(url, table_name, page, account, reader.api_version)
                for obj, err in bad:
                    created = _created_or_none(obj)
                    if created is not None:
                        bad_hours.add(created - created % HOUR)
                    where = _hour_label(created) if created is not None else "an unknown hour"
                    result.rejected.append(f"{table_name} {where}: {err}")
                for obj, row in good:
                    h = int(obj["created"]) - int(obj["created"]) % HOUR
                    if h in bad_hours:
                        continue  # the hour of a malformed object commits nothing
                    hours.setdefault(h, []).append(row)
                    result.rows_by_hour[h] = result.rows_by_hour.get(h, 0) + 1
                    if table_name == "payouts" and obj.get("automatic"):
                        # The membership listing starts now, in parallel; the hour's commit waits for it.
                        fut = pool.submit(_payout_members, reader, obj["id"]) if pool is not None else None
                        payouts.setdefault(h, []).append((obj["id"], fut))
                dated = [c for c in (_created_or_none(o) for o in page) if c is not None]
                if dated:
                    last_hour = dated[-1] - dated[-1] % HOUR
                    flush(below_hour=last_hour)
                reader.processing.add(time.monotonic() - t0)
                if stop:
                    break
                if on_page is not None:
                    on_page()
            lower = span.close()
            flush(below_hour=lower - HOUR if lower > start else None, final=True)
        else:
            lower = span.close()
        if bad_hours:
            # Keep the cursor above the newest failed hour: the chunk is not complete.
            _set_cursor(db(), resume_key, account, max(lowest_done, max(bad_hours) + HOUR), None)
        elif lower > start:
            # [start, lower) was given to another worker: until the window ends, a re-run resumes here.
            if lowest_done != lower:
                _set_cursor(db(), resume_key, account, lower, None)
        elif resumed_at is not None or lowest_done != upper:
            db().execute(
                f"delete from {SCHEMA}._sync_state where stream = %s and stripe_account = %s", (resume_key, account)
            )
    finally:
        if opened:
            opened[0].close()
    result.hours = len(hour_windows(lower, end))
    return result


@dataclass
class FirstPage:
    """A window's first page, fetched ahead to size the work (newest first); it becomes the newest chunk's first page."""

    objects: list[dict]
    has_more: bool


def _created_or_none(obj: object) -> int | None:
    value = obj.get("created") if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _pages(reader: StripeReader, path: str, start: int, upper: int, first: FirstPage | None):
    """Pages of objects created in [start, upper), newest first, starting from a prefetched first page if any."""
    params = {"created": {"gte": start, "lt": upper}}
    if first is None:
        for page, _ in reader.iter_pages(path, params):
            yield page
        return
    last = _created_or_none(first.objects[-1]) if first.objects else None
    if last is not None and last < start:
        # The first page already reaches below this chunk: it holds all of the chunk's objects.
        yield [o for o in first.objects if (_created_or_none(o) or start) >= start]
        return
    yield first.objects
    if first.has_more and first.objects:
        for page, _ in reader.iter_pages(path, params, start_after=first.objects[-1]["id"]):
            yield page


def probe_window(reader: StripeReader, table_name: str, start: int, end: int) -> FirstPage:
    """The newest page of objects created in [start, end): what sizes the window's chunks."""
    path = TABLES[table_name].list_path
    page = reader.list_page(path, {"created": {"gte": start, "lt": end}})
    data = page.get("data")
    if not isinstance(data, list):
        raise ValueError(f"GET {path}: response is not a Stripe list (no 'data' array)")
    return FirstPage(data, bool(page.get("has_more")) and bool(data))


@dataclass
class WindowsResult:
    """What `extract_windows` did: a result per table that succeeded, the error of each that failed."""

    results: dict[str, WindowResult] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    in_flight: int = 0
    chunks: dict[str, int] = field(default_factory=dict)
    pieces_taken: int = 0  # chunks cut in two at the end of the window (`Span.cut`)


PROBES_PER_TABLE = 4  # parts of a window whose newest pages are probed at once (fewer for a window of fewer hours)


def _forget_pieces(
    url: str,
    account: str,
    totals: dict[str, WindowResult],
    errors: dict[str, BaseException],
    given: dict[str, list[str]],
    start: int,
    end: int,
) -> None:
    """After a window: drop the resume cursors that cutting chunks left behind.

    A table extracted completely leaves no cursor in [start, end) (as an uncut chunk leaves none). A
    table that failed or kept a malformed object keeps the cut chunks' cursors (a re-run resumes there
    and re-reads the pieces, whose own cursors no re-run would look up) and loses only the pieces'.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        for t, keys in given.items():
            if t not in errors and not totals[t].rejected:
                conn.execute(
                    f"delete from {SCHEMA}._sync_state where stripe_account = %s and stream like %s "
                    "and split_part(stream, ':', 3)::bigint >= %s and split_part(stream, ':', 4)::bigint <= %s",
                    (account, f"extract:{t}:%", start, end),
                )
            else:
                conn.execute(
                    f"delete from {SCHEMA}._sync_state where stripe_account = %s and stream = any(%s)", (account, keys)
                )


def extract_windows(
    reader: StripeReader,
    url: str,
    tables: Iterable[str],
    start: int,
    end: int,
    workers: int | None = None,
    pieces: int | None = None,
    progress: Callable[[WindowResult], None] | None = None,
) -> WindowsResult:
    """Extract [start, end) of several tables at once, sharing one pool of in-flight requests.

    1. Probes, all sent at once, fetch the newest page of each table in each of `PROBES_PER_TABLE`
       hour-aligned parts of the window: they time Stripe's answers and show how dense each part is,
       and each becomes the first page of its part's newest chunk (a part that fits in one page is done
       after it). Probing parts rather than the whole window puts four times the requests into the
       first round trip, which otherwise leaves the limit idle while the plan waits for it.
    2. In-flight requests come from the rate limit and the observed latency (`concurrency.in_flight`,
       Little's law with headroom); an explicit `workers` wins. The limiter, not the pool, caps the rate.
    3. Each part of each table is cut into hour-aligned chunks, about two per in-flight slot across all
       parts in proportion to their pages, none shorter than ~10 pages (a chunk's last page is partly empty).
       Chunks run largest first (the payouts first: their memberships are chains of pages of their
       own), each streamed and committed hour by hour; payout memberships are listed several at a time.
       `pieces` fixes the chunk count per table (and skips the probes and step 4).
    4. A worker with nothing left to start cuts the running chunk with most pages left in two
       (`Span.cut`, on an hour boundary below what that chunk has read) and lists the older half, so the
       workers stay busy when the plan has fewer chunks than workers and when chunks end unevenly.
       The cut chunk leaves its resume cursor at the cut until the window is done (`_forget_pieces`).

    A failing table does not stop the others: its error is in `errors`, the others' rows are committed.
    A malformed object fails only the hour it was created in: that hour commits nothing (the object is
    kept in `_rejected_objects`), every other hour is committed, and the table's `rejected` names each
    bad object; the caller decides to fail (the hourly asset, the history job at its end).
    """
    with fewer_gc_pauses():
        return _extract_windows(reader, url, tables, start, end, workers, pieces, progress)


def _extract_windows(
    reader: StripeReader,
    url: str,
    tables: Iterable[str],
    start: int,
    end: int,
    workers: int | None,
    pieces: int | None,
    progress: Callable[[WindowResult], None] | None,
) -> WindowsResult:
    tables = list(dict.fromkeys(tables))
    out = WindowsResult()
    if not tables or end <= start:
        out.results = {t: WindowResult(t, start, end) for t in tables}
        return out
    # A probe per table and part of the window (`PROBES_PER_TABLE` hour-aligned parts, one for a short
    # window), all sent at once: the parts' newest pages size the plan and become their newest chunks' first pages.
    parts = _chunks(start, end, PROBES_PER_TABLE if pieces is None else 1)
    first: dict[tuple[str, int], FirstPage] = {}
    part_pages: dict[tuple[str, int], float] = {}
    if pieces is None:
        guess = concurrency.in_flight(reader.rate_limit_per_s, reader.seconds_per_page(), explicit=workers)
        with ThreadPoolExecutor(max_workers=max(1, min(len(tables) * len(parts), guess))) as pool:
            futures = {
                (t, i): pool.submit(probe_window, reader, t, s, e) for t in tables for i, (s, e) in enumerate(parts)
            }
        for (t, i), fut in futures.items():
            try:
                fp = first[(t, i)] = fut.result()
            except Exception as exc:  # noqa: BLE001 - a table's failure is reported per table
                out.errors.setdefault(t, exc)
                continue
            created = [c for c in (_created_or_none(o) for o in fp.objects) if c is not None]
            part_start, part_end = parts[i]
            part_pages[(t, i)] = (
                concurrency.estimate_pages(
                    len(fp.objects),
                    max(created, default=part_end),
                    min(created, default=part_end),
                    part_start,
                    fp.has_more,
                )
                if created
                else 1.0
            )
    part_pages = {key: n for key, n in part_pages.items() if key[0] not in out.errors}
    pages = {t: sum(n for (tt, _), n in part_pages.items() if tt == t) for t in tables if t not in out.errors}
    seconds_per_page = reader.seconds_per_page()  # W, timed on the probes
    slots = concurrency.in_flight(reader.rate_limit_per_s, seconds_per_page, explicit=workers)
    out.in_flight = slots
    counts = {(t, 0): pieces for t in tables} if pieces is not None else concurrency.chunk_counts(part_pages, slots)
    tasks: list[tuple[float, str, int, int, FirstPage | None]] = []
    for (t, i), n in counts.items():
        part_start, part_end = parts[i]
        chunks = _chunks(part_start, part_end, n)
        out.chunks[t] = out.chunks.get(t, 0) + len(chunks)
        hours = max(1, len(hour_windows(part_start, part_end)))
        for j, (s, e) in enumerate(chunks):
            weight = part_pages.get((t, i), 1.0) * len(hour_windows(s, e)) / hours
            tasks.append((weight, t, s, e, first.get((t, i)) if j == len(chunks) - 1 else None))
    # Largest first, but payouts before all: each automatic payout's membership (`?payout=`) is a chain
    # of pages of its own, listed as soon as the payout's page arrives; started last, they were the tail.
    tasks.sort(key=lambda task: (task[1] != "payouts", -task[0]))
    # Hours of the window, not summed over chunks: an hour cut in two would count twice (a failed table has no total).
    totals = {t: WindowResult(t, start, end, hours=len(hour_windows(start, end))) for t, _ in counts}

    # Pages per second of `created`, per probed table: how much of a running chunk is left to take.
    density = {t: pages[t] / max(1, end - start) for t in pages if pieces is None}
    lock = threading.Lock()
    unstarted = [len(tasks)]
    running: dict[Span, str] = {}
    given: dict[str, list[str]] = {}  # resume keys of the pieces taken from running chunks, per table
    futures: deque[tuple[str, Future]] = deque()
    keys = {t: [f"extract:{t}:{s}:{e}" for _, tt, s, e, _ in tasks if tt == t] for t in totals}
    found = _resume_cursors(url, reader.stripe_account or "", [k for ks in keys.values() for k in ks])
    # Pieces cut later have no cursor yet: {} (not None) tells their chunk not to look one up.
    cursors = {t: {k: found[k] for k in ks if k in found} for t, ks in keys.items()}

    def run(task: tuple[float, str, int, int, FirstPage | None]) -> WindowResult:
        _, t, s, e, fp = task
        with lock:
            unstarted[0] -= 1
        if t in out.errors:  # another chunk of this table failed: its other chunks would only fail again
            return WindowResult(t, s, e)
        span = Span(s, e)
        with lock:
            running[span] = t
        try:
            return extract_chunk(
                reader,
                url,
                t,
                s,
                e,
                first_page=fp,
                pool=members_pool,
                span=span,
                cursors=cursors.get(t),
                on_page=take_over,
            )
        finally:
            with lock:
                del running[span]
            take_over()

    def take_over() -> None:
        """A worker is idle and nothing is left to start: cut the running chunk with most pages left in two.

        Called when a chunk ends and after every page, so the pool's workers stay busy from the first
        pages (a plan with fewer chunks than workers) to the window's end (chunks ending unevenly); how
        small a part may be follows `concurrency.piece_pages`.
        """
        with lock:
            if unstarted[0] > 0 or len(running) >= workers_n:
                return
            unstarted[0] += 1  # this worker's place, while a piece is cut for it
            candidates = [(span, t) for span, t in running.items() if t in density and t not in out.errors]
        min_pages = concurrency.piece_pages(len(candidates), reader.rate_limit_per_s, seconds_per_page)
        left = sorted(((span.pages_left(density[t]), id(span), span, t) for span, t in candidates), reverse=True)
        for pages_left, _, span, t in left:
            if pages_left < 2 * min_pages:
                break
            piece = span.cut(math.ceil((span.at - span.lower) * min_pages / pages_left))
            if piece is None:
                continue
            with lock:
                out.pieces_taken += 1
                given.setdefault(t, []).append(f"extract:{t}:{piece[0]}:{piece[1]}")
            futures.append((t, pool.submit(run, (0.0, t, piece[0], piece[1], None))))
            return
        with lock:
            unstarted[0] -= 1

    workers_n = slots if density else max(1, min(slots, len(tasks) or 1))
    with (
        ThreadPoolExecutor(max_workers=slots) as members_pool,
        ThreadPoolExecutor(max_workers=workers_n) as pool,
    ):
        futures.extend((task[1], pool.submit(run, task)) for task in tasks)
        while futures:  # a piece is queued before the chunk it was taken from returns
            t, fut = futures.popleft()
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - reported per table
                out.errors.setdefault(t, exc)
                continue
            total = totals[t]
            total.rows += res.rows
            total.payout_members += res.payout_members
            for h, n in res.rows_by_hour.items():  # an hour cut in two has rows in two chunks
                total.rows_by_hour[h] = total.rows_by_hour.get(h, 0) + n
            total.rejected.extend(res.rejected)
            if progress:
                progress(res)
    if given:
        _forget_pieces(url, reader.stripe_account or "", totals, out.errors, given, start, end)
    out.results = {t: r for t, r in totals.items() if t not in out.errors}
    return out


def extract_window(
    reader: StripeReader,
    url: str,
    table_name: str,
    start: int,
    end: int,
    workers: int | None = None,
    pieces: int | None = None,
    progress: Callable[[WindowResult], None] | None = None,
) -> WindowResult:
    """Extract [start, end) of one table: chunks in parallel, each streamed and committed hour by hour.

    In-flight requests are sized from the reader's rate limit and Stripe's observed latency unless
    `workers` is given; see `extract_windows`. Raises the table's error, if any.
    """
    res = extract_windows(reader, url, [table_name], start, end, workers=workers, pieces=pieces, progress=progress)
    if table_name in res.errors:
        raise res.errors[table_name]
    return res.results[table_name]


# ---------------------------------------------------------------------------------------------
# The update path


def _resume_cursors(url: str, account: str, streams: list[str]) -> dict[str, int]:
    """The resume cursors of a window's chunks, read in one query."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            f"select stream, cursor_created from {SCHEMA}._sync_state where stripe_account = %s and stream = any(%s)",
            (account, streams),
        ).fetchall()
    return {stream: created for stream, created in rows if created is not None}


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


# What a retrieve brings along (`expand[]`), so a changed object's balance transactions cost no request
# of their own. Disputes carry theirs in full without asking.
EXPAND_ON_RETRIEVE: dict[str, list[str]] = {
    "charges": ["balance_transaction", "failure_balance_transaction"],
    "refunds": ["balance_transaction", "failure_balance_transaction"],
    "payouts": ["balance_transaction", "failure_balance_transaction"],
}


def split_expanded(table_name: str, obj: dict) -> tuple[dict, list[dict], list[str]]:
    """An object as listed (expanded fields back to ids), the balance transactions it carried, and the ids it did not.

    The staged row of the object is then the same as when it was listed without `expand[]`; a field
    Stripe left unexpanded (an id) is returned in the third list, to be retrieved on its own.
    """
    carried: list[dict] = []
    missing: list[str] = []
    if table_name == "disputes":
        for bt in obj.get("balance_transactions") or []:
            if isinstance(bt, dict):
                carried.append(bt)
            elif bt:
                missing.append(bt)
        return obj, carried, missing
    plain = dict(obj)
    for key in EXPAND_ON_RETRIEVE.get(table_name, []):
        ref = obj.get(key)
        if isinstance(ref, dict):
            carried.append(ref)
            plain[key] = ref.get("id")
        elif ref:
            missing.append(ref)
    return plain, carried, missing


def refetch_objects(reader: StripeReader, url: str, changed: dict[str, set[str]]) -> dict[str, int]:
    """Retrieve the current state of changed objects (with the balance transactions they carry) and upsert them.

    One request per object: its balance transactions come along through `expand[]` (disputes embed
    theirs), and the staged rows are those the list path would write.
    """
    account = reader.stripe_account or ""
    fetched: dict[str, list[dict]] = {}
    members: dict[str, list[str]] = {}
    carried: dict[str, dict] = {}
    missing: set[str] = set()
    for table_name, ids in changed.items():
        table = TABLES[table_name]
        for oid in sorted(ids):
            obj = reader.retrieve(table.list_path, oid, expand=EXPAND_ON_RETRIEVE.get(table_name))
            obj, bts, ids_only = split_expanded(table_name, obj)
            fetched.setdefault(table_name, []).append(obj)
            carried.update((bt["id"], bt) for bt in bts if isinstance(bt.get("id"), str))
            missing.update(ids_only)
            if (
                table_name == "payouts"
                and obj.get("automatic")
                and obj.get("status") in ("paid", "in_transit", "failed")
            ):
                members[oid] = [bt["id"] for bt in reader.list_all("/v1/balance_transactions", {"payout": oid})]
    bts = [carried[b] for b in sorted(carried)]
    bts += [reader.retrieve("/v1/balance_transactions", b) for b in sorted(missing - set(carried))]
    if bts:
        fetched.setdefault("balance_transactions", []).extend(bts)
    rows = {t: _rows_or_fail(url, t, objs, account, "update-path", reader.api_version) for t, objs in fetched.items()}
    with psycopg.connect(url) as conn, conn.transaction():
        for t, r in rows.items():
            staging.upsert_rows(conn, TABLES[t], r)
        for po, bts_of in members.items():
            staging.upsert_payout_members(conn, po, bts_of, account)
    return {t: len(r) for t, r in rows.items()}


def raise_if_rejected(rejected: list[str]) -> None:
    """Fail with every malformed object named (object, field, problem, the hour it was created in)."""
    if rejected:
        shown = "\n  ".join(rejected[:50]) + (f"\n  … and {len(rejected) - 50} more" if len(rejected) > 50 else "")
        raise ExtractionError(
            f"{len(rejected)} malformed Stripe object(s); the hour of each committed nothing, every other hour was"
            f" extracted (each object is kept with its reason in {SCHEMA}._rejected_objects):\n  {shown}"
        )


def relist_recent(reader: StripeReader, url: str, since: int, until: int) -> dict[str, int]:
    """The age-guard fallback: re-list every object type that can change, created in [since, until)."""
    res = extract_windows(reader, url, MUTABLE_TABLES, since, until)
    if res.errors:
        raise next(iter(res.errors.values()))
    raise_if_rejected([r for t in MUTABLE_TABLES for r in res.results[t].rejected])
    return {t: res.results[t].rows for t in MUTABLE_TABLES}


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
        rows.append(
            (
                account,
                ev["id"],
                ev["created"],
                ev["type"],
                obj.get("object"),
                obj.get("id"),
                json.dumps(ev, separators=(",", ":")),
            )
        )
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                f"insert into {SCHEMA}.events (stripe_account, id, created, type, object_type, object_id, raw) "
                "values (%s, %s, to_timestamp(%s), %s, %s, %s, %s) on conflict do nothing",
                rows,
            )
