"""The load engine: make the target hold every planned item, through the posting ledger, idempotently.

For each planned item `decide.decide` says what is missing (see its table); this module carries it out:

* unknown → record v1 as `computed` (payload + idempotency key), then POST;
* `computed` (a run died mid-request) → resend the stored body under the stored key (the target replays,
  or finds the record by its external_ref);
* `posted`, same content → nothing; changed content → record v+1, reverse v (dated at v's posting date),
  POST v+1 under a new external_ref (`txn_…~v2`): never an edit or a duplicate;
* `dead_lettered` → left for a re-drive (`redrive.py`), which posts it under the next attempt's key.

Accounts are checked against the target's chart (read once per run): an entry that uses an unknown,
inactive or header account is dead-lettered without a request, and the rest goes on. `RecordInvalid`
→ dead letter with the target's details; `CredentialsError` stops the run; `TransientError` (retries
exhausted) → the item stays `computed` for next time. What differs per target is behind `sage.target`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any

import psycopg

from stripe_sage_pipeline.load import ledger as L
from stripe_sage_pipeline.load.decide import Kind, after_look_up, decide
from stripe_sage_pipeline.load.plan import JE, PlannedItem
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.sage.client import PostResult
from stripe_sage_pipeline.sage.errors import CredentialsError, NotFound, RecordInvalid, SageError, TransientError
from stripe_sage_pipeline.sage.factory import CountingTransport
from stripe_sage_pipeline.sage.keys import idempotency_key
from stripe_sage_pipeline.sage.target import Target, as_target

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

    def error(self, message: str) -> None:
        """Thread-safe: remember one error message."""
        with self._lock:
            self.errors.append(message)

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


def account_problems(chart: dict[str, dict[str, Any]], item: PlannedItem) -> list[dict[str, Any]]:
    """Details in Sage's error shape for every account of the item that cannot take a posting (pure)."""
    out = []
    for fld, code in item.accounts:
        acct = chart.get(code)
        if acct is None:
            out.append(
                {"field": fld, "code": "AccountNotFound", "message": f"GL account {code!r} does not exist in Sage"}
            )
        elif not acct.get("active", True):
            out.append({"field": fld, "code": "AccountInactive", "message": f"GL account {code} is inactive"})
        elif not acct.get("postable", True):
            out.append({"field": fld, "code": "AccountInactive", "message": f"GL account {code} is a header account"})
    return out


class AccountBook:
    """The target's chart of accounts, read once, to check items before they are posted."""

    def __init__(self, client: Any) -> None:
        self.accounts = {a["glacnt"]: a for a in as_target(client).accounts()}

    def problems(self, item: PlannedItem) -> list[dict[str, Any]]:
        """Details in Sage's error shape for every account of the item that cannot take a posting."""
        return account_problems(self.accounts, item)


def error_reason(err: Exception) -> tuple[str, str, list[dict[str, Any]], str | None]:
    """(reason code, message, details, request id) of a target error, for the dead-letter table."""
    details = list(getattr(err, "details", None) or [])
    code = (
        next((d.get("code") for d in details if d.get("code")), None)
        or getattr(err, "code", None)
        or type(err).__name__
    )
    return code, getattr(err, "message", str(err)), details, getattr(err, "request_id", None)


# -- the engine --------------------------------------------------------------------------------------


class _Connections:
    """One autocommit psycopg connection per worker thread."""

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


def row_for(item: PlannedItem, version: int, attempt: int = 1) -> L.LedgerRow:
    """The `computed` ledger row of version `version` of an item (its key derived from ref, content, attempt)."""
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


def with_new_attempt(row: L.LedgerRow, item: PlannedItem) -> L.LedgerRow:
    """The same version, re-planned, under the next attempt's key (the last one may be stored as a 422)."""
    attempt = row.attempt + 1
    return L.LedgerRow(
        **{
            **row.__dict__,
            "status": "computed",
            "content_hash": item.content_hash,
            "payload": item.payload,
            "attempt": attempt,
            "item_key": item.item_key,
            "partition_date": item.partition_date,
            "posting_mode": item.posting_mode,
            "idempotency_key": L.item_idempotency_key(
                row.resource, row.sage_ref, L.content_hash(item.payload), attempt
            ),
        }
    )


class Poster:
    """Posts planned items of any resource through the ledger to one target; one instance per run."""

    def __init__(
        self,
        url: str,
        client: Any,
        *,
        workers: int = 4,
        accounts: AccountBook | None = None,
        transport: CountingTransport | None = None,
        logger: logging.Logger | Any = None,
    ) -> None:
        self.url = url
        self.client = client
        self.target: Target = as_target(client)
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
                self._accounts = AccountBook(self.target)
            return self._accounts

    def close(self) -> None:
        """Close the worker connections."""
        self.conns.close()

    # -- planning against the ledger ---------------------------------------------------------------

    def sync(self, items: Sequence[PlannedItem], *, redrive: bool = False, stats: LoadStats | None = None) -> LoadStats:
        """Make the target hold every item (posting only what is missing); returns the counts."""
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
                cur = current.get(item.external_ref)
                action = decide(cur, item, redrive=redrive)
                if action.kind is Kind.LOOK_UP:
                    found = self._find(cur)
                    if found is not None:
                        # The earlier attempt did commit: it is posted, and now outdated.
                        L.mark_posted(conn, cur, found, "", "found")
                        cur.status, cur.sage_id = "posted", found
                    action = after_look_up(cur, item, found is not None)
                self._apply(action.kind, action.version, cur, item, conn, new_rows, todo, stats)
        L.insert_computed(conn, new_rows)
        self._run(todo, stats)
        return stats

    def _apply(
        self,
        kind: Kind,
        version: int,
        cur: L.LedgerRow | None,
        item: PlannedItem,
        conn: psycopg.Connection,
        new_rows: list[L.LedgerRow],
        todo: list[tuple[L.LedgerRow, PlannedItem]],
        stats: LoadStats,
    ) -> None:
        if kind is Kind.HOLD:
            stats.add(held=1)
        elif kind is Kind.UNCHANGED:
            stats.add(unchanged=1)
        elif kind is Kind.WAIT:
            stats.add(dead_letters_waiting=1)
        elif kind is Kind.RESEND:
            todo.append((cur, item))  # resend exactly what was stored, under the same key
        elif kind is Kind.NEW_ATTEMPT:
            row = with_new_attempt(cur, item)
            L.replace_attempt(conn, row)
            todo.append((row, item))
        elif kind in (Kind.POST_NEW, Kind.POST_NEW_VERSION, Kind.REVERSE_AND_REPOST, Kind.MANUAL_CORRECTION):
            row = row_for(item, version)
            new_rows.append(row)
            if kind is Kind.MANUAL_CORRECTION:
                # Invoices and receipts have no reverse: a credit memo is finance's call.
                item = PlannedItem(**{**item.__dict__, "hold_reason": "ManualCorrectionRequired"})
            todo.append((row, item))
        else:  # pragma: no cover - decide() returns only the kinds above
            raise ValueError(f"unexpected action {kind}")

    def _find(self, row: L.LedgerRow) -> str | None:
        try:
            return self.target.find(row.resource, row.sage_ref)
        except NotFound:
            return None

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

    def _dead_letter(
        self,
        row: L.LedgerRow,
        reason: str,
        message: str,
        details: list[dict[str, Any]] | None,
        request_id: str | None,
        stats: LoadStats,
    ) -> None:
        L.mark_dead_lettered(self.conns.get(), row, reason, message, details, request_id)
        stats.add(dead_lettered=1)
        self.log.warning(
            "dead letter: %s %s v%d: %s (%s)", row.resource, row.external_ref, row.version, reason, message
        )

    def _post_one(self, row: L.LedgerRow, item: PlannedItem, stats: LoadStats) -> None:
        conn = self.conns.get()
        if item.hold_reason == "ManualCorrectionRequired":
            self._dead_letter(
                row,
                "ManualCorrectionRequired",
                f"{row.resource} {row.external_ref} changed after it was posted; Sage has no reversal"
                " for it: post a credit memo or adjustment, then re-drive",
                [],
                None,
                stats,
            )
            return
        problems = self.accounts.problems(item)
        if problems:
            self._dead_letter(
                row, problems[0]["code"], "pre-post check: " + problems[0]["message"], problems, None, stats
            )
            return
        try:
            if row.version > 1 and row.resource == JE and not self._reverse_previous(row, stats):
                return
            result = self.target.post(
                row.resource, row.payload, idempotency_key=row.idempotency_key, external_ref=row.sage_ref
            )
        except CredentialsError:
            raise
        except TransientError as err:
            stats.add(transient_failures=1)
            stats.error(f"{row.resource} {row.sage_ref}: {err}")
            self.log.warning("transient failure, %s %s stays computed: %s", row.resource, row.sage_ref, err)
            return
        except SageError as err:
            # 422 RecordInvalid above all; also an unresolvable 409 or a 404 of the entry to reverse.
            code, message, details, request_id = error_reason(err)
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
        prev = L.rows_where(
            conn,
            "resource = %s and external_ref = %s and version = %s",
            (row.resource, row.external_ref, row.version - 1),
        )
        if not prev or prev[0].status != "posted":
            return True
        try:
            self.reverse(prev[0], stats)
        except (RecordInvalid, NotFound) as err:
            code, message, details, request_id = error_reason(err)
            self._dead_letter(
                row,
                code,
                f"reversal of {prev[0].sage_ref} ({prev[0].sage_id}) failed: {message}",
                details,
                request_id,
                stats,
            )
            return False
        return True

    def reverse(self, prev: L.LedgerRow, stats: LoadStats) -> PostResult:
        """Reverse a posted journal entry at its own posting date (idempotent; a second call finds the first)."""
        reversal_ref = L.versioned_ref(prev.external_ref, prev.version, "r")
        result = self.target.reverse_journal_entry(
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
                _, message, _, _ = error_reason(err)
                stats.error(f"orphan {row.sage_ref} could not be reversed: {message}")


__all__ = [
    "AccountBook",
    "LoadStats",
    "PartitionBlocked",
    "PlanError",
    "Poster",
    "account_problems",
    "error_reason",
    "row_for",
    "with_new_attempt",
]
