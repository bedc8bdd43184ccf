"""Post one posting date (a partition) to Sage Pro through the posting ledger, idempotently.

For each planned item the ledger decides what is missing:

* unknown → record v1 as `computed` (payload + idempotency key), then POST;
* `computed` (a run died mid-request) → resend the stored body under the stored key (Sage replays);
* `posted`, same content → nothing; changed content → record v+1, reverse v (Sage's reverse endpoint,
  dated at v's posting date), POST v+1 under a new external_ref (`txn_…~v2`): never an edit or a duplicate;
* `dead_lettered` → left for a re-drive (`redrive.py`), which posts it under the next attempt's key.

Before anything is sent, the partition's entries must satisfy the invariants of accounting.md
(balanced to the minor unit, one non-negative side per line); otherwise the whole partition is refused
(`PartitionBlocked`). Accounts are checked against `GET /accounts` (read once per run): an entry that
uses an unknown, inactive or header account is dead-lettered without a request, and the rest goes on.
422 → dead letter with Sage's details; 409 DuplicateExternalReference → verified and counted posted;
401/403 → `CredentialsError` stops the run; retries exhausted → the item stays `computed` for next time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any

import httpx
import psycopg

from stripe_sage_pipeline.load import ledger as L
from stripe_sage_pipeline.load.plan import (
    INVOICES,
    JE,
    RECEIPTS,
    PlannedItem,
    invoice_lines,
    journal_lines,
    payout_status,
    plan_cash_receipt,
    plan_invoices,
    plan_journal_entries,
    receipt_candidates,
)
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.sage.client import PostResult, SageClient
from stripe_sage_pipeline.sage.errors import CredentialsError, NotFound, RecordInvalid, SageError, TransientError
from stripe_sage_pipeline.sage.keys import idempotency_key
from stripe_sage_pipeline.transform.mapping import Mapping, load_mapping

log = logging.getLogger(__name__)


class PartitionBlocked(RuntimeError):
    """The partition's lines break a pre-post invariant: nothing of it is posted."""

    def __init__(self, day: date, problems: dict[str, list[str]]):
        self.day = day
        self.problems = problems
        lines = [f"  {ref}: {'; '.join(p)}" for ref, p in sorted(problems.items())[:20]]
        super().__init__(
            f"refusing to post {day}: {len(problems)} item(s) break the pre-post invariants\n" + "\n".join(lines)
        )


class PlanError(ValueError):
    """The mapping asks for something the load cannot do (e.g. invoice-driven revenue in summary mode)."""


# -- requests counting -------------------------------------------------------------------------------


class CountingTransport(httpx.BaseTransport):
    """An httpx transport that counts the requests it sends (retries included); thread-safe."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self.inner = inner or httpx.HTTPTransport()
        self.count = 0
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Count, then delegate."""
        with self._lock:
            self.count += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()


def make_client(base_url: str, user: str, password: str, *, rate_per_minute: int | None = None,
                max_concurrency: int = 4, **kwargs: Any) -> tuple[SageClient, CountingTransport]:
    """A SageClient whose requests are counted (the counter is returned beside it)."""
    transport = CountingTransport()
    client = SageClient(base_url, user, password, rate_per_minute=rate_per_minute, max_concurrency=max_concurrency,
                        transport=transport, **kwargs)
    return client, transport


# -- statistics --------------------------------------------------------------------------------------


@dataclass
class LoadStats:
    """What one load did; the counts become Dagster asset metadata."""

    planned: int = 0
    created: int = 0
    replayed: int = 0
    already_exists: int = 0
    unchanged: int = 0
    dead_lettered: int = 0
    dead_letters_waiting: int = 0
    held: int = 0
    reversed: int = 0
    corrected: int = 0
    transient_failures: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw: int) -> None:
        """Thread-safe increments."""
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    @property
    def posted(self) -> int:
        """Items that exist in Sage after this run because of it (created, replayed or found)."""
        return self.created + self.replayed + self.already_exists

    def as_dict(self) -> dict[str, Any]:
        """Counts as a plain dict (errors capped)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d["posted"] = self.posted
        d["errors"] = self.errors[:20]
        return d

    def merge(self, other: LoadStats) -> LoadStats:
        """Add another run's counts to these."""
        for k, v in other.as_dict().items():
            if k in ("posted",):
                continue
            if k == "errors":
                self.errors.extend(other.errors)
            else:
                setattr(self, k, getattr(self, k) + v)
        return self


# -- accounts ----------------------------------------------------------------------------------------


class AccountBook:
    """Sage's chart of accounts, read once (`GET /accounts`), to check items before they are posted."""

    def __init__(self, client: SageClient) -> None:
        self.accounts = {a["glacnt"]: a for a in client.list_all("/accounts")}

    def problems(self, item: PlannedItem) -> list[dict[str, Any]]:
        """Details in Sage's error shape for every account of the item that cannot take a posting."""
        out = []
        for fld, code in item.accounts:
            acct = self.accounts.get(code)
            if acct is None:
                out.append({"field": fld, "code": "AccountNotFound", "message": f"GL account {code!r} does not exist in Sage"})
            elif not acct.get("active", True):
                out.append({"field": fld, "code": "AccountInactive", "message": f"GL account {code} is inactive"})
            elif not acct.get("postable", True):
                out.append({"field": fld, "code": "AccountInactive", "message": f"GL account {code} is a header account"})
        return out


# -- the engine --------------------------------------------------------------------------------------


class _Connections:
    """One autocommit-free psycopg connection per worker thread."""

    def __init__(self, url: str) -> None:
        self.url = libpq_url(url)
        self._local = threading.local()
        self._all: list[psycopg.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.url, autocommit=True)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                c.close()
            self._all.clear()


def _row_for(item: PlannedItem, version: int, attempt: int = 1) -> L.LedgerRow:
    sage_ref = L.versioned_ref(item.external_ref, version)
    return L.LedgerRow(
        resource=item.resource,
        external_ref=item.external_ref,
        version=version,
        item_key=item.item_key,
        sage_ref=sage_ref,
        partition_date=item.partition_date,
        posting_mode=item.posting_mode,
        status="computed",
        content_hash=item.content_hash,
        payload=item.payload,
        attempt=attempt,
        idempotency_key=L.item_idempotency_key(item.resource, sage_ref, L.content_hash(item.payload), attempt),
    )


def _with_new_attempt(row: L.LedgerRow, item: PlannedItem) -> L.LedgerRow:
    """The same version, re-planned, under the next attempt's key (the last one may be stored as a 422)."""
    attempt = row.attempt + 1
    return L.LedgerRow(
        **{**row.__dict__, "status": "computed", "content_hash": item.content_hash, "payload": item.payload,
           "attempt": attempt, "item_key": item.item_key, "partition_date": item.partition_date,
           "posting_mode": item.posting_mode,
           "idempotency_key": L.item_idempotency_key(row.resource, row.sage_ref, L.content_hash(item.payload), attempt)}
    )


def _reason(err: Exception) -> tuple[str, str, list[dict[str, Any]], str | None]:
    details = list(getattr(err, "details", None) or [])
    code = next((d.get("code") for d in details if d.get("code")), None) or getattr(err, "code", None) or type(err).__name__
    return code, getattr(err, "message", str(err)), details, getattr(err, "request_id", None)


class Poster:
    """Posts planned items of any POST resource through the ledger; one instance per run."""

    def __init__(self, url: str, client: SageClient, *, workers: int = 4, accounts: AccountBook | None = None,
                 transport: CountingTransport | None = None, logger: logging.Logger | Any = None) -> None:
        self.url = url
        self.client = client
        self.workers = max(1, workers)
        self._accounts = accounts
        self.transport = transport
        self.log = logger or log
        self.conns = _Connections(url)
        self._accounts_lock = threading.Lock()

    @property
    def accounts(self) -> AccountBook:
        """The chart, fetched on first use (once per run, whichever worker thread asks first)."""
        with self._accounts_lock:
            if self._accounts is None:
                self._accounts = AccountBook(self.client)
            return self._accounts

    def close(self) -> None:
        """Close the worker connections."""
        self.conns.close()

    # -- planning against the ledger ---------------------------------------------------------------

    def sync(self, items: Sequence[PlannedItem], *, redrive: bool = False, stats: LoadStats | None = None
             ) -> LoadStats:
        """Make Sage hold every item (posting only what is missing); returns the counts."""
        stats = stats or LoadStats()
        stats.planned += len(items)
        conn = self.conns.get()
        todo: list[tuple[L.LedgerRow, PlannedItem]] = []
        new_rows: list[L.LedgerRow] = []
        by_resource: dict[str, list[PlannedItem]] = {}
        for item in items:
            by_resource.setdefault(item.resource, []).append(item)
        for resource, group in by_resource.items():
            current = L.current_versions(conn, resource, [i.external_ref for i in group])
            for item in group:
                if item.hold_reason:
                    stats.add(held=1)
                    continue
                cur = current.get(item.external_ref)
                if cur is None:
                    row = _row_for(item, 1)
                    new_rows.append(row)
                    todo.append((row, item))
                elif cur.status == "computed":
                    if cur.content_hash == item.content_hash:
                        todo.append((cur, item))  # resend exactly what was stored, under the same key
                    else:
                        found = self._find(cur)
                        if found is not None:
                            # The earlier attempt did commit: it is posted, and now outdated.
                            L.mark_posted(conn, cur, found, "", "found")
                            cur.status, cur.sage_id = "posted", found
                            self._plan_change(cur, item, new_rows, todo, stats)
                        else:
                            row = _with_new_attempt(cur, item)
                            L.replace_attempt(conn, row)
                            todo.append((row, item))
                elif cur.status == "posted":
                    if cur.content_hash == item.content_hash:
                        stats.add(unchanged=1)
                    else:
                        self._plan_change(cur, item, new_rows, todo, stats)
                elif cur.status == "dead_lettered":
                    if redrive:
                        row = _with_new_attempt(cur, item)
                        L.replace_attempt(conn, row)
                        todo.append((row, item))
                    else:
                        stats.add(dead_letters_waiting=1)
                elif cur.status == "reversed":
                    row = _row_for(item, cur.version + 1)
                    new_rows.append(row)
                    todo.append((row, item))
        L.insert_computed(conn, new_rows)
        self._run(todo, stats)
        return stats

    def _plan_change(self, cur: L.LedgerRow, item: PlannedItem, new_rows: list[L.LedgerRow],
                     todo: list[tuple[L.LedgerRow, PlannedItem]], stats: LoadStats) -> None:
        row = _row_for(item, cur.version + 1)
        new_rows.append(row)
        if cur.resource != JE:
            # Invoices and receipts have no reverse endpoint: a credit memo is finance's call.
            todo.append((row, PlannedItem(**{**item.__dict__, "hold_reason": "ManualCorrectionRequired"})))
            return
        todo.append((row, item))

    def _find(self, row: L.LedgerRow) -> str | None:
        try:
            rec = self.client.find_by_external_ref(row.resource, row.sage_ref)
        except NotFound:
            return None
        if rec is None:
            return None
        from stripe_sage_pipeline.sage.client import ID_FIELDS

        return str(rec[ID_FIELDS[row.resource]])

    # -- execution ---------------------------------------------------------------------------------

    def _run(self, todo: Sequence[tuple[L.LedgerRow, PlannedItem]], stats: LoadStats) -> None:
        if not todo:
            return
        before = self.transport.count if self.transport else 0
        if self.workers == 1 or len(todo) == 1:
            for row, item in todo:
                self._post_one(row, item, stats)
        else:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sage-post") as pool:
                futures = [pool.submit(self._post_one, row, item, stats) for row, item in todo]
                try:
                    for f in futures:
                        f.result()
                except CredentialsError:
                    for f in futures:
                        f.cancel()
                    raise
        if self.transport:
            stats.add(requests=self.transport.count - before)

    def _dead_letter(self, row: L.LedgerRow, reason: str, message: str, details: list[dict[str, Any]] | None,
                     request_id: str | None, stats: LoadStats) -> None:
        L.mark_dead_lettered(self.conns.get(), row, reason, message, details, request_id)
        stats.add(dead_lettered=1)
        self.log.warning("dead letter: %s %s v%d: %s (%s)", row.resource, row.external_ref, row.version, reason, message)

    def _post_one(self, row: L.LedgerRow, item: PlannedItem, stats: LoadStats) -> None:
        conn = self.conns.get()
        if item.hold_reason == "ManualCorrectionRequired":
            self._dead_letter(row, "ManualCorrectionRequired",
                              f"{row.resource} {row.external_ref} changed after it was posted; Sage has no reversal"
                              " for it: post a credit memo or adjustment, then re-drive", [], None, stats)
            return
        problems = self.accounts.problems(item)
        if problems:
            self._dead_letter(row, problems[0]["code"], "pre-post check: " + problems[0]["message"], problems, None, stats)
            return
        try:
            if row.version > 1 and row.resource == JE and not self._reverse_previous(row, stats):
                return
            result = self.client.post(row.resource, row.payload, idempotency_key=row.idempotency_key,
                                      external_ref=row.sage_ref)
        except CredentialsError:
            raise
        except TransientError as err:
            stats.add(transient_failures=1)
            with stats._lock:
                stats.errors.append(f"{row.resource} {row.sage_ref}: {err}")
            self.log.warning("transient failure, %s %s stays computed: %s", row.resource, row.sage_ref, err)
            return
        except SageError as err:
            # 422 RecordInvalid above all; also an unresolvable 409 or a 404 of the entry to reverse.
            code, message, details, request_id = _reason(err)
            self._dead_letter(row, code, message, details, request_id, stats)
            return
        self._record(conn, row, result, stats)

    def _record(self, conn: psycopg.Connection, row: L.LedgerRow, result: PostResult, stats: LoadStats) -> None:
        L.mark_posted(conn, row, result.sage_id, result.request_id, result.status)
        stats.add(**{result.status: 1})
        if row.version > 1:
            stats.add(corrected=1)

    def _reverse_previous(self, row: L.LedgerRow, stats: LoadStats) -> bool:
        """Reverse version n-1 before posting version n; False when the reversal was dead-lettered."""
        conn = self.conns.get()
        prev = L.rows_where(conn, "resource = %s and external_ref = %s and version = %s",
                            (row.resource, row.external_ref, row.version - 1))
        if not prev or prev[0].status != "posted":
            return True
        try:
            self.reverse(prev[0], stats)
        except (RecordInvalid, NotFound) as err:
            code, message, details, request_id = _reason(err)
            self._dead_letter(row, code, f"reversal of {prev[0].sage_ref} ({prev[0].sage_id}) failed: {message}",
                              details, request_id, stats)
            return False
        return True

    def reverse(self, prev: L.LedgerRow, stats: LoadStats) -> PostResult:
        """Reverse a posted journal entry at its own posting date (idempotent; a second call finds the first)."""
        reversal_ref = L.versioned_ref(prev.external_ref, prev.version, "r")
        result = self.client.reverse_journal_entry(
            prev.sage_id or "",
            idempotency_key(f"{JE}/reverse", prev.sage_ref, prev.sage_id or ""),
            posting_date=prev.payload.get("posting_date"),
            external_ref=reversal_ref,
            description=f"Reversal of {prev.sage_ref} (source changed)"[:60],
        )
        L.mark_reversed(self.conns.get(), prev, result.sage_id, reversal_ref, result.request_id)
        stats.add(reversed=1)
        self.log.info("reversed %s (%s) by %s", prev.sage_ref, prev.sage_id, result.sage_id)
        return result

    def sweep_orphans(self, resource: str, day: date, planned_refs: Iterable[str], stats: LoadStats) -> None:
        """Reverse posted entries of this date that the marts no longer produce (e.g. a changed posting mode)."""
        planned = set(planned_refs)
        conn = self.conns.get()
        for row in L.rows_where(conn, "resource = %s and partition_date = %s and status = 'posted'", (resource, day)):
            if row.external_ref in planned:
                continue
            newer = L.current_versions(conn, resource, [row.external_ref])[row.external_ref]
            if newer.version != row.version:
                continue
            try:
                self.reverse(row, stats)
            except RecordInvalid as err:
                _, message, _, _ = _reason(err)
                with stats._lock:
                    stats.errors.append(f"orphan {row.sage_ref} could not be reversed: {message}")


# -- partitions -------------------------------------------------------------------------------------


def _check_modes(mapping: Mapping) -> None:
    if mapping.revenue_mode == "invoice_driven" and mapping.posting_mode != "detail":
        raise PlanError("revenue_mode invoice_driven needs posting_mode detail (a payout summary already books"
                        " revenue); change one of them in mapping.yaml")


def _invoiced_charges(conn: psycopg.Connection, day: date | None = None, charge_ids: Sequence[str] | None = None
                      ) -> dict[str, str]:
    return {ln["charge_id"]: ln["custno"] for ln in invoice_lines(conn, day, charge_ids) if ln["custno"]}


def plan_partition_entries(conn: psycopg.Connection, day: date, mapping: Mapping) -> list[PlannedItem]:
    """The journal entries of one posting date in the selected mode (invoice-driven: minus the receipts)."""
    _check_modes(mapping)
    lines = journal_lines(conn, day)
    skip: set[str] = set()
    if mapping.revenue_mode == "invoice_driven":
        charge_ids = [ln["charge_id"] for ln in lines if ln["charge_id"]]
        skip = set(receipt_candidates(lines, _invoiced_charges(conn, charge_ids=charge_ids), mapping))
    statuses = None
    if mapping.posting_mode == "payout_summary":
        statuses = payout_status(conn, [ln["payout_id"] for ln in lines if ln["entry_type"] == "payout_summary"])
    return plan_journal_entries(lines, statuses, skip)


def _block_if_broken(day: date, items: Sequence[PlannedItem]) -> None:
    problems = {f"{i.resource} {i.external_ref}": i.problems for i in items if i.problems}
    if problems:
        raise PartitionBlocked(day, problems)


def load_journal_entries(url: str, poster: Poster, day: date, mapping: Mapping | None = None) -> LoadStats:
    """Post the journal entries of one posting date; re-running posts only what is missing."""
    mapping = mapping or load_mapping()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        L.ensure_schema(conn)
        # One loader per date at a time, across processes (a backfill and a retry may overlap).
        conn.execute("select pg_advisory_lock(hashtext(%s))", (f"sage_load:{JE}:{day}",))
        try:
            items = plan_partition_entries(conn, day, mapping)
            _block_if_broken(day, items)
            stats = poster.sync(items)
            if items or _mart_has_rows(conn):
                poster.sweep_orphans(JE, day, [i.external_ref for i in items], stats)
            return stats
        finally:
            conn.execute("select pg_advisory_unlock(hashtext(%s))", (f"sage_load:{JE}:{day}",))


def _mart_has_rows(conn: psycopg.Connection) -> bool:
    # An empty mart (a failed or skipped build) must never read as "every posted entry disappeared".
    return conn.execute("select exists (select 1 from finance.fct_journal_lines where is_selected_mode)").fetchone()[0]


def load_invoices(url: str, poster: Poster, day: date, mapping: Mapping | None = None) -> LoadStats:
    """Post the invoices of one date (invoice-driven revenue only; otherwise nothing to do)."""
    mapping = mapping or load_mapping()
    if mapping.revenue_mode != "invoice_driven":
        return LoadStats()
    _check_modes(mapping)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        L.ensure_schema(conn)
        items = plan_invoices(invoice_lines(conn, day))
        _block_if_broken(day, items)
    return poster.sync(items)


def plan_partition_receipts(conn: psycopg.Connection, day: date, mapping: Mapping) -> list[PlannedItem]:
    """Cash receipts for the charge entries of one date whose invoice is posted (else held)."""
    lines = journal_lines(conn, day)
    charge_ids = [ln["charge_id"] for ln in lines if ln["charge_id"]]
    facts = receipt_candidates(lines, _invoiced_charges(conn, charge_ids=charge_ids), mapping)
    posted = L.current_versions(conn, INVOICES, [f["charge_id"] for f in facts.values()])
    invnos = {ref: row.sage_id for ref, row in posted.items() if row.status == "posted"}
    return [plan_cash_receipt(f, invnos.get(f["charge_id"])) for f in facts.values()]


def load_cash_receipts(url: str, poster: Poster, day: date, mapping: Mapping | None = None) -> LoadStats:
    """Post the cash receipts of one date (invoice-driven revenue only)."""
    mapping = mapping or load_mapping()
    if mapping.revenue_mode != "invoice_driven":
        return LoadStats()
    _check_modes(mapping)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        L.ensure_schema(conn)
        items = plan_partition_receipts(conn, day, mapping)
    return poster.sync(items)


def load_partition(url: str, poster: Poster, day: date, mapping: Mapping | None = None,
                   customers: Callable[[], LoadStats] | None = None) -> dict[str, LoadStats]:
    """Everything of one date in dependency order: customers, invoices, receipts, journal entries."""
    mapping = mapping or load_mapping()
    out: dict[str, LoadStats] = {}
    if customers is not None:
        out["customers"] = customers()
    out[INVOICES] = load_invoices(url, poster, day, mapping)
    out[RECEIPTS] = load_cash_receipts(url, poster, day, mapping)
    out[JE] = load_journal_entries(url, poster, day, mapping)
    return out


def gl_movement(client: SageClient, accounts: Iterable[str] | None = None, from_date: str | None = None,
                to_date: str | None = None) -> dict[str, dict[str, str]]:
    """Net debit − credit per currency and account as Sage reports it (`/accounts/{glacnt}/balance`)."""
    codes = list(accounts) if accounts is not None else [a["glacnt"] for a in client.list_all("/accounts")]
    out: dict[str, dict[str, str]] = {}
    for code in codes:
        bal = client.account_balance(code, from_date, to_date)
        for cur, b in (bal.get("balances") or {}).items():
            out.setdefault(cur.lower(), {})[code] = b["net"]
    return out
