"""SQLite persistence and posting rules of the Sage Pro sandbox.

One database file per data folder holds the chart, periods, documents, GL postings and stored
idempotent responses, so the sandbox keeps its books across restarts. Money is stored as integers in
minor units and rendered as decimal strings only on the way out. Every public method takes the store
lock and runs in one SQLite transaction: the HTTP layer is async and may call from several threads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from stripe_sage_pipeline.money import to_decimal_str
from stripe_sage_sandboxes.sage.validation import (
    ApiError,
    Checker,
    Detail,
    not_found,
    now_utc,
    record_invalid,
)

# The default chart of docs/accounting.md, plus a header account and an inactive one that
# tests (and users trying out the checks) can post to and see rejected.
DEFAULT_CHART: tuple[tuple[str, str, str, bool, bool], ...] = (
    ("1000", "Current Assets (header)", "asset", True, False),
    ("1010", "Operating Bank", "asset", True, True),
    ("1150", "Stripe Clearing", "asset", True, True),
    ("1160", "Legacy Clearing (inactive)", "asset", False, True),
    ("1170", "Stripe Reserves Held", "asset", True, True),
    ("1175", "Stripe Issuing Funds Held", "asset", True, True),
    ("1200", "Accounts Receivable", "asset", True, True),
    ("2200", "Sales Tax Payable", "liability", True, True),
    ("2300", "Due to Connected Accounts", "liability", True, True),
    ("2400", "Stripe Capital Financing", "liability", True, True),
    ("2500", "Unapplied Customer Funds", "liability", True, True),
    ("4000", "Sales Revenue", "revenue", True, True),
    ("4050", "Sales Refunds", "revenue", True, True),
    ("4060", "Chargebacks", "revenue", True, True),
    ("4100", "Platform Fee Revenue", "revenue", True, True),
    ("6100", "Merchant Processing Fees", "expense", True, True),
    ("6110", "Dispute Fees", "expense", True, True),
    ("6300", "Stripe Issuing Card Spend", "expense", True, True),
    ("6400", "Climate Contributions", "expense", True, True),
    ("6900", "Stripe Adjustments", "expense", True, True),
    ("7900", "FX Gain/Loss", "expense", True, True),
    ("9999", "Stripe Suspense", "asset", True, True),
)
FIRST_YEAR, LAST_YEAR = 2020, 2035
IDEMPOTENCY_TTL_S = 24 * 3600
JOURNALS = ("GJ", "ST", "AR", "CR")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    glacnt TEXT PRIMARY KEY, description TEXT NOT NULL, type TEXT NOT NULL,
    active INTEGER NOT NULL, postable INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS periods (
    id TEXT PRIMARY KEY, fiscal_year INTEGER NOT NULL, period INTEGER NOT NULL,
    start_date TEXT NOT NULL, end_date TEXT NOT NULL, status TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS customers (
    custno TEXT PRIMARY KEY, external_ref TEXT UNIQUE, updated_at TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS invoices (
    invno TEXT PRIMARY KEY, external_ref TEXT UNIQUE, custno TEXT NOT NULL, doc_type TEXT NOT NULL,
    invdate TEXT NOT NULL, balance INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cash_receipts (
    receipt_no TEXT PRIMARY KEY, external_ref TEXT UNIQUE, custno TEXT NOT NULL,
    receipt_date TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal_entries (
    batch_no TEXT PRIMARY KEY, external_ref TEXT UNIQUE, posting_date TEXT NOT NULL, journal TEXT NOT NULL,
    status TEXT NOT NULL, reverses TEXT, reversed_by TEXT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gl_postings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, posting_date TEXT NOT NULL, period TEXT NOT NULL,
    glacnt TEXT NOT NULL, currency TEXT NOT NULL, debit INTEGER NOT NULL, credit INTEGER NOT NULL,
    source TEXT NOT NULL, doc_type TEXT NOT NULL, doc_no TEXT NOT NULL, line_no INTEGER NOT NULL,
    external_ref TEXT, memo TEXT, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS gl_postings_acct ON gl_postings (glacnt, posting_date);
CREATE TABLE IF NOT EXISTS idempotency (
    user TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, status INTEGER NOT NULL,
    headers TEXT NOT NULL, body TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (user, key));
"""


def _money(value: int, currency: str) -> str:
    return to_decimal_str(value, currency)


class SageStore:
    """The sandbox's books in one SQLite file; thread-safe through one lock."""

    def __init__(
        self,
        path: Path,
        *,
        base_currency: str = "USD",
        closed_periods: Sequence[str] = (),
        extra_accounts: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.base_currency = base_currency.upper()
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        with self._tx() as c:
            self._seed(c, closed_periods, extra_accounts)

    # -- plumbing -------------------------------------------------------------------------------

    class _Tx:
        def __init__(self, store: SageStore) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            try:
                self.store._conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                # `__exit__` never runs when `__enter__` raises: release here, or every later request waits.
                self.store._lock.release()
                raise
            return self.store._conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                self.store._conn.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.store._lock.release()

    def _tx(self) -> SageStore._Tx:
        return SageStore._Tx(self)

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._conn.close()

    def _next(self, c: sqlite3.Connection, name: str) -> int:
        row = c.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        value = (row["value"] if row else 0) + 1
        c.execute("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", (name, value))
        return value

    def _seed(
        self, c: sqlite3.Connection, closed_periods: Sequence[str], extra_accounts: Sequence[tuple[str, str, str]]
    ) -> None:
        for glacnt, desc, typ, active, postable in DEFAULT_CHART:
            c.execute(
                "INSERT OR IGNORE INTO accounts VALUES (?, ?, ?, ?, ?)", (glacnt, desc, typ, int(active), int(postable))
            )
        for glacnt, desc, typ in extra_accounts:
            c.execute("INSERT OR IGNORE INTO accounts VALUES (?, ?, ?, 1, 1)", (glacnt, desc, typ))
        now = now_utc()
        for year in range(FIRST_YEAR, LAST_YEAR + 1):
            for month in range(1, 13):
                start = date(year, month, 1)
                end = date(year + (month == 12), month % 12 + 1, 1).toordinal() - 1
                c.execute(
                    "INSERT OR IGNORE INTO periods VALUES (?, ?, ?, ?, ?, 'open', ?)",
                    (f"{year:04d}-{month:02d}", year, month, start.isoformat(), date.fromordinal(end).isoformat(), now),
                )
        # Configured closed periods are applied at every start: configuration wins over earlier state.
        for pid in closed_periods:
            c.execute("UPDATE periods SET status = 'closed', updated_at = ? WHERE id = ?", (now, pid))
        c.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (now,))

    @staticmethod
    def _where(filters: dict[str, Any], exact: tuple[str, ...], date_column: str) -> tuple[list[str], list[Any]]:
        """SQL conditions for a collection's filters: equality on `exact` keys, `from`/`to` on a date column."""
        where, params = [], []
        for key in exact:
            if filters.get(key):
                where.append(f"{key} = ?")
                params.append(filters[key])
        for bound, op in (("from", ">="), ("to", "<=")):
            if filters.get(bound):
                where.append(f"{date_column} {op} ?")
                params.append(filters[bound])
        return where, params

    @staticmethod
    def _page(
        c: sqlite3.Connection, table: str, where: list[str], params: list[Any], order: str, top: int, skip: int
    ) -> tuple[list[sqlite3.Row], int]:
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        count = c.execute(f"SELECT COUNT(*) FROM {table}{clause}", params).fetchone()[0]
        rows = c.execute(f"SELECT * FROM {table}{clause} ORDER BY {order} LIMIT ? OFFSET ?", [*params, top, skip])
        return rows.fetchall(), count

    # -- accounts and periods ---------------------------------------------------------------------

    @staticmethod
    def _account(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "glacnt": row["glacnt"],
            "description": row["description"],
            "type": row["type"],
            "active": bool(row["active"]),
            "postable": bool(row["postable"]),
        }

    def list_accounts(self, filters: dict[str, Any], top: int, skip: int) -> tuple[list[dict[str, Any]], int]:
        """Chart of accounts, by code; filters `type`, `active`."""
        where, params = [], []
        if filters.get("type"):
            where.append("type = ?")
            params.append(filters["type"])
        if filters.get("active") is not None:
            where.append("active = ?")
            params.append(int(filters["active"]))
        with self._tx() as c:
            rows, count = self._page(c, "accounts", where, params, "glacnt", top, skip)
        return [self._account(r) for r in rows], count

    def get_account(self, glacnt: str) -> dict[str, Any]:
        """One account or 404."""
        with self._tx() as c:
            row = c.execute("SELECT * FROM accounts WHERE glacnt = ?", (glacnt,)).fetchone()
        if row is None:
            raise not_found("Account", glacnt)
        return self._account(row)

    def account_balance(self, glacnt: str, date_from: str | None, date_to: str | None) -> dict[str, Any]:
        """Debit, credit and net (debit − credit) movement per currency over an inclusive date range."""
        self.get_account(glacnt)
        where, params = ["glacnt = ?"], [glacnt]
        if date_from:
            where.append("posting_date >= ?")
            params.append(date_from)
        if date_to:
            where.append("posting_date <= ?")
            params.append(date_to)
        with self._tx() as c:
            rows = c.execute(
                f"SELECT currency, SUM(debit) d, SUM(credit) k, COUNT(*) n FROM gl_postings WHERE {' AND '.join(where)}"
                " GROUP BY currency ORDER BY currency",
                params,
            ).fetchall()
        balances = {
            r["currency"]: {
                "debit": _money(r["d"], r["currency"]),
                "credit": _money(r["k"], r["currency"]),
                "net": _money(r["d"] - r["k"], r["currency"]),
                "postings": r["n"],
            }
            for r in rows
        }
        return {"glacnt": glacnt, "from": date_from, "to": date_to, "balances": balances}

    @staticmethod
    def _period(row: sqlite3.Row) -> dict[str, Any]:
        return {k: row[k] for k in ("id", "fiscal_year", "period", "start_date", "end_date", "status", "updated_at")}

    def list_periods(self, filters: dict[str, Any], top: int, skip: int) -> tuple[list[dict[str, Any]], int]:
        """Fiscal periods (calendar months), oldest first; filters `status`, `from`, `to` (dates)."""
        where, params = [], []
        if filters.get("status"):
            where.append("status = ?")
            params.append(filters["status"])
        if filters.get("from"):
            where.append("end_date >= ?")
            params.append(filters["from"])
        if filters.get("to"):
            where.append("start_date <= ?")
            params.append(filters["to"])
        with self._tx() as c:
            rows, count = self._page(c, "periods", where, params, "id", top, skip)
        return [self._period(r) for r in rows], count

    def set_period_status(self, period_id: str, status: str) -> dict[str, Any]:
        """Open or close one period."""
        with self._tx() as c:
            if c.execute("SELECT 1 FROM periods WHERE id = ?", (period_id,)).fetchone() is None:
                raise not_found("Period", period_id)
            c.execute("UPDATE periods SET status = ?, updated_at = ? WHERE id = ?", (status, now_utc(), period_id))
            return self._period(c.execute("SELECT * FROM periods WHERE id = ?", (period_id,)).fetchone())

    def _check_period(self, c: sqlite3.Connection, field: str, day: str, details: list[Detail]) -> str | None:
        row = c.execute("SELECT id, status FROM periods WHERE start_date <= ? AND end_date >= ?", (day, day)).fetchone()
        if row is None:
            details.append(Detail(field, "PeriodNotFound", f"no fiscal period holds {day}"))
            return None
        if row["status"] != "open":
            details.append(Detail(field, "PeriodClosed", f"period {row['id']} is closed", {"period": row["id"]}))
            return None
        return row["id"]

    def _check_accounts(self, c: sqlite3.Connection, fields: Iterable[tuple[str, str]], details: list[Detail]) -> None:
        for field, glacnt in fields:
            row = c.execute("SELECT * FROM accounts WHERE glacnt = ?", (glacnt,)).fetchone()
            if row is None:
                details.append(Detail(field, "AccountNotFound", f"GL account {glacnt!r} does not exist"))
            elif not row["active"]:
                details.append(Detail(field, "AccountInactive", f"GL account {glacnt} is inactive"))
            elif not row["postable"]:
                details.append(
                    Detail(field, "AccountInactive", f"GL account {glacnt} is a header account, not postable")
                )

    @staticmethod
    def _duplicate_ref(c: sqlite3.Connection, table: str, key: str, external_ref: str | None) -> None:
        if not external_ref:
            return
        row = c.execute(f"SELECT {key} FROM {table} WHERE external_ref = ?", (external_ref,)).fetchone()
        if row is not None:
            existing = row[key]
            raise ApiError(
                409,
                "DuplicateExternalReference",
                f"external_ref {external_ref!r} was already used by {existing}",
                [
                    Detail(
                        "external_ref",
                        "DuplicateExternalReference",
                        f"already used by {existing}",
                        {"existing_id": existing, "external_ref": external_ref},
                    )
                ],
            )

    @staticmethod
    def _insert_postings(
        c: sqlite3.Connection,
        *,
        posting_date: str,
        period: str,
        currency: str,
        source: str,
        doc_type: str,
        doc_no: str,
        external_ref: str | None,
        legs: Sequence[tuple[str, int, str | None]],
    ) -> None:
        """Insert signed legs (positive = debit) as postings; zero legs are skipped."""
        now = now_utc()
        for line_no, (glacnt, signed, memo) in enumerate(legs, start=1):
            if signed == 0:
                continue
            c.execute(
                "INSERT INTO gl_postings (posting_date, period, glacnt, currency, debit, credit, source, doc_type,"
                " doc_no, line_no, external_ref, memo, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    posting_date,
                    period,
                    glacnt,
                    currency,
                    max(signed, 0),
                    max(-signed, 0),
                    source,
                    doc_type,
                    doc_no,
                    line_no,
                    external_ref,
                    memo,
                    now,
                ),
            )

    # -- customers ----------------------------------------------------------------------------------

    CUSTOMER_FIELDS: dict[str, int] = {
        "company": 40,
        "contact": 30,
        "email": 60,
        "phone": 20,
        "address1": 40,
        "address2": 40,
        "city": 20,
        "state": 10,
        "zip": 10,
        "country": 2,
        "terms": 20,
        "notes": 250,
    }

    def _customer_fields(self, ck: Checker, *, creating: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, max_len in self.CUSTOMER_FIELDS.items():
            if key not in ck.body:
                continue
            value = ck.string(key, max_len=max_len, required=(key == "company"), min_len=1 if key == "company" else 0)
            if key == "country" and value is not None and not (len(value) == 2 and value.isalpha() and value.isupper()):
                ck.add(key, "InvalidValue", "must be an ISO 3166 alpha-2 code in upper case, e.g. US")
            out[key] = value
        if creating and "company" not in ck.body:
            ck.add("company", "Required", "is required")
        if "currency" in ck.body:
            out["currency"] = ck.currency("currency", self.base_currency)
        if "active" in ck.body:
            if not isinstance(ck.body["active"], bool):
                ck.add("active", "InvalidValue", "must be true or false")
            out["active"] = ck.body["active"]
        if "external_ref" in ck.body:
            out["external_ref"] = ck.string("external_ref", max_len=64)
        return out

    def create_customer(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        """Create a customer (409 on a used external_ref or custno)."""
        allowed = set(self.CUSTOMER_FIELDS) | {"custno", "currency", "active", "external_ref"}
        ck = Checker(body, allowed)
        custno = ck.key_code("custno")
        data = self._customer_fields(ck, creating=True)
        with self._tx() as c:
            self._duplicate_ref(c, "customers", "custno", data.get("external_ref"))
            ck.raise_if_any()
            assert custno is not None
            if c.execute("SELECT 1 FROM customers WHERE custno = ?", (custno,)).fetchone():
                raise ApiError(
                    409,
                    "RecordDuplicate",
                    f"customer {custno} already exists",
                    [Detail("custno", "RecordDuplicate", "already exists", {"existing_id": custno})],
                )
            now = now_utc()
            record = {key: None for key in self.CUSTOMER_FIELDS}
            record.update({"custno": custno, "currency": self.base_currency, "active": True, "external_ref": None})
            record.update(data)
            record.update({"created_at": now, "updated_at": now, "created_by": user})
            c.execute(
                "INSERT INTO customers VALUES (?, ?, ?, ?)", (custno, record["external_ref"], now, json.dumps(record))
            )
        return record

    def get_customer(self, custno: str) -> dict[str, Any]:
        """One customer or 404."""
        with self._tx() as c:
            row = c.execute("SELECT data FROM customers WHERE custno = ?", (custno,)).fetchone()
        if row is None:
            raise not_found("Customer", custno)
        return json.loads(row["data"])

    def update_customer(self, custno: str, body: dict[str, Any]) -> dict[str, Any]:
        """Change fields of a customer; `custno` itself is the key and cannot change."""
        ck = Checker(body, set(self.CUSTOMER_FIELDS) | {"currency", "active", "external_ref", "custno"})
        if "custno" in body and body["custno"] != custno:
            ck.add("custno", "InvalidValue", "the customer number cannot be changed")
        data = self._customer_fields(ck, creating=False)
        data.pop("custno", None)
        with self._tx() as c:
            row = c.execute("SELECT data FROM customers WHERE custno = ?", (custno,)).fetchone()
            if row is None:
                raise not_found("Customer", custno)
            ck.raise_if_any()
            record = json.loads(row["data"])
            new_ref = data.get("external_ref")
            if new_ref and new_ref != record.get("external_ref"):
                self._duplicate_ref(c, "customers", "custno", new_ref)
            record.update(data)
            record["updated_at"] = now_utc()
            c.execute(
                "UPDATE customers SET external_ref = ?, updated_at = ?, data = ? WHERE custno = ?",
                (record.get("external_ref"), record["updated_at"], json.dumps(record), custno),
            )
        return record

    def list_customers(self, filters: dict[str, Any], top: int, skip: int) -> tuple[list[dict[str, Any]], int]:
        """Customers by custno; filters `external_ref`, `custno`, `updated_since` (normalised timestamp)."""
        where, params = [], []
        for key in ("external_ref", "custno"):
            if filters.get(key):
                where.append(f"{key} = ?")
                params.append(filters[key])
        if filters.get("updated_since"):
            where.append("updated_at >= ?")
            params.append(filters["updated_since"])
        with self._tx() as c:
            rows, count = self._page(c, "customers", where, params, "custno", top, skip)
        return [json.loads(r["data"]) for r in rows], count

    # -- invoices and credit memos --------------------------------------------------------------------

    @staticmethod
    def _render_invoice(row: sqlite3.Row) -> dict[str, Any]:
        d = json.loads(row["data"])
        cur = d["currency"]
        lines = [
            {
                **ln,
                "unit_price": _money(ln["unit_price"], cur),
                "extended_amount": _money(ln["extended_amount"], cur),
                "tax_amount": _money(ln["tax_amount"], cur),
            }
            for ln in d["lines"]
        ]
        balance = row["balance"]
        return {
            **d,
            "lines": lines,
            "subtotal": _money(d["subtotal"], cur),
            "tax": _money(d["tax"], cur),
            "total": _money(d["total"], cur),
            "balance": _money(balance, cur),
            "status": "open" if balance else "closed",
        }

    def create_invoice(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        """Create an invoice or credit memo and post it: Dr AR / Cr revenue + tax (mirrored for a memo)."""
        allowed = {
            "doc_type",
            "invno",
            "custno",
            "invdate",
            "due_date",
            "currency",
            "description",
            "reference",
            "ar_glacnt",
            "lines",
            "totals",
            "external_ref",
        }
        ck = Checker(body, allowed)
        doc_type = ck.choice("doc_type", ("invoice", "credit_memo"), default="invoice")
        invno = ck.key_code("invno", required=False)
        custno = ck.key_code("custno")
        invdate = ck.date("invdate")
        due_date = ck.date("due_date", required=False)
        description = ck.string("description", max_len=60)
        reference = ck.string("reference", max_len=30)
        external_ref = ck.string("external_ref", max_len=64)
        ar_glacnt = ck.glacnt("ar_glacnt", default="1200")
        with self._tx() as c:
            self._duplicate_ref(c, "invoices", "invno", external_ref)
            cust = None
            if custno:
                cust = c.execute("SELECT data FROM customers WHERE custno = ?", (custno,)).fetchone()
                if cust is None:
                    ck.add("custno", "CustomerNotFound", f"customer {custno} does not exist")
            default_cur = json.loads(cust["data"]).get("currency") if cust else None
            currency = ck.currency("currency", default_cur or self.base_currency)
            lines_in = body.get("lines")
            lines: list[dict[str, Any]] = []
            accounts: list[tuple[str, str]] = [("ar_glacnt", ar_glacnt)] if ar_glacnt else []
            if not isinstance(lines_in, list) or not 1 <= len(lines_in) <= 200:
                ck.add("lines", "InvalidValue", "must be a list of 1 to 200 lines")
                lines_in = []
            for i, line in enumerate(lines_in):
                if not isinstance(line, dict):
                    ck.add(f"lines[{i}]", "InvalidValue", "must be an object")
                    continue
                lc = Checker(
                    line,
                    {"description", "quantity", "unit_price", "revenue_glacnt", "tax_amount", "tax_glacnt"},
                    prefix=f"lines[{i}].",
                )
                ldesc = lc.string("description", max_len=60)
                qty_raw = line.get("quantity", "1")
                qty = _quantity(qty_raw)
                if qty is None:
                    lc.add("quantity", "InvalidValue", "must be a positive number, as a string with at most 4 decimals")
                unit = lc.amount("unit_price", currency, allow_negative=True)
                rev = lc.glacnt("revenue_glacnt")
                tax = lc.amount("tax_amount", currency, required=False)
                tax_acct = lc.glacnt("tax_glacnt", required=bool(tax))
                ext = None
                if qty is not None and unit is not None:
                    num, scale = qty
                    if (num * unit) % scale:
                        lc.add(
                            "quantity", "InvalidAmount", "quantity × unit_price is not a whole amount of the currency"
                        )
                    else:
                        ext = num * unit // scale
                if rev:
                    accounts.append((f"lines[{i}].revenue_glacnt", rev))
                if tax_acct:
                    accounts.append((f"lines[{i}].tax_glacnt", tax_acct))
                ck.details.extend(lc.details)
                lines.append(
                    {
                        "line_no": i + 1,
                        "description": ldesc,
                        "quantity": str(qty_raw),
                        "unit_price": unit,
                        "extended_amount": ext,
                        "revenue_glacnt": rev,
                        "tax_amount": tax or 0,
                        "tax_glacnt": tax_acct,
                    }
                )
            self._check_accounts(c, accounts, ck.details)
            period = self._check_period(c, "invdate", invdate, ck.details) if invdate else None
            ck.raise_if_any()
            subtotal = sum(ln["extended_amount"] for ln in lines)
            tax_total = sum(ln["tax_amount"] for ln in lines)
            total = subtotal + tax_total
            if total < 0:
                ck.add("lines", "InvalidAmount", "the document total must not be negative")
            self._check_totals(body.get("totals"), currency, subtotal, tax_total, total, ck)
            ck.raise_if_any()
            assert doc_type and invdate and period and custno and currency and ar_glacnt
            if invno is None:
                prefix = "IN" if doc_type == "invoice" else "CM"
                invno = f"{prefix}{self._next(c, 'invno'):06d}"
            if c.execute("SELECT 1 FROM invoices WHERE invno = ?", (invno,)).fetchone():
                raise ApiError(
                    409,
                    "RecordDuplicate",
                    f"document {invno} already exists",
                    [Detail("invno", "RecordDuplicate", "already exists", {"existing_id": invno})],
                )
            record = {
                "invno": invno,
                "doc_type": doc_type,
                "custno": custno,
                "invdate": invdate,
                "due_date": due_date,
                "period": period,
                "currency": currency,
                "description": description,
                "reference": reference,
                "ar_glacnt": ar_glacnt,
                "lines": lines,
                "subtotal": subtotal,
                "tax": tax_total,
                "total": total,
                "external_ref": external_ref,
                "created_at": now_utc(),
                "created_by": user,
            }
            sign = 1 if doc_type == "invoice" else -1
            legs: list[tuple[str, int, str | None]] = [(ar_glacnt, sign * total, description)]
            for ln in lines:
                legs.append((ln["revenue_glacnt"], -sign * ln["extended_amount"], ln["description"]))
                if ln["tax_amount"]:
                    legs.append((ln["tax_glacnt"], -sign * ln["tax_amount"], f"tax {ln['description'] or ''}".strip()))
            self._insert_postings(
                c,
                posting_date=invdate,
                period=period,
                currency=currency,
                source="AR",
                doc_type=doc_type,
                doc_no=invno,
                external_ref=external_ref,
                legs=legs,
            )
            c.execute(
                "INSERT INTO invoices VALUES (?, ?, ?, ?, ?, ?, ?)",
                (invno, external_ref, custno, doc_type, invdate, total, json.dumps(record)),
            )
            return self._render_invoice(c.execute("SELECT * FROM invoices WHERE invno = ?", (invno,)).fetchone())

    @staticmethod
    def _check_totals(totals: Any, currency: str, subtotal: int, tax: int, total: int, ck: Checker) -> None:
        if totals is None:
            return
        if not isinstance(totals, dict):
            ck.add("totals", "InvalidValue", "must be an object with subtotal, tax, total")
            return
        tc = Checker(totals, {"subtotal", "tax", "total"}, prefix="totals.")
        for key, computed in (("subtotal", subtotal), ("tax", tax), ("total", total)):
            given = tc.amount(key, currency, required=False, allow_negative=True, default=None)
            if given is not None and given != computed:
                code = "TaxMismatch" if key == "tax" else "InvalidAmount"
                tc.add(
                    key,
                    code,
                    f"{_money(given, currency)} does not equal the computed {_money(computed, currency)}",
                    computed=_money(computed, currency),
                )
        ck.details.extend(tc.details)

    def get_invoice(self, invno: str) -> dict[str, Any]:
        """One invoice or credit memo, or 404."""
        with self._tx() as c:
            row = c.execute("SELECT * FROM invoices WHERE invno = ?", (invno,)).fetchone()
        if row is None:
            raise not_found("Invoice", invno)
        return self._render_invoice(row)

    def list_invoices(self, filters: dict[str, Any], top: int, skip: int) -> tuple[list[dict[str, Any]], int]:
        """Invoices by number; filters `external_ref`, `custno`, `doc_type`, `from`, `to` (invdate)."""
        where, params = self._where(filters, ("external_ref", "custno", "doc_type"), "invdate")
        with self._tx() as c:
            rows, count = self._page(c, "invoices", where, params, "invno", top, skip)
        return [self._render_invoice(r) for r in rows], count

    # -- cash receipts -------------------------------------------------------------------------------

    @staticmethod
    def _render_receipt(row: sqlite3.Row) -> dict[str, Any]:
        d = json.loads(row["data"])
        cur = d["currency"]
        return {
            **d,
            "amount": _money(d["amount"], cur),
            "fee_amount": _money(d["fee_amount"], cur),
            "net_amount": _money(d["net_amount"], cur),
            "applications": [{**a, "amount": _money(a["amount"], cur)} for a in d["applications"]],
        }

    def create_cash_receipt(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        """Record a receipt (Dr deposit amount − fee, Dr fee, Cr AR) or a refund (the mirror)."""
        allowed = {
            "custno",
            "receipt_date",
            "amount",
            "fee_amount",
            "currency",
            "deposit_glacnt",
            "fee_glacnt",
            "ar_glacnt",
            "applications",
            "receipt_type",
            "reference",
            "description",
            "external_ref",
        }
        ck = Checker(body, allowed)
        custno = ck.key_code("custno")
        receipt_date = ck.date("receipt_date")
        receipt_type = ck.choice("receipt_type", ("receipt", "refund"), default="receipt")
        reference = ck.string("reference", max_len=30)
        description = ck.string("description", max_len=60)
        external_ref = ck.string("external_ref", max_len=64)
        deposit = ck.glacnt("deposit_glacnt")
        ar = ck.glacnt("ar_glacnt", default="1200")
        with self._tx() as c:
            self._duplicate_ref(c, "cash_receipts", "receipt_no", external_ref)
            cust = None
            if custno:
                cust = c.execute("SELECT data FROM customers WHERE custno = ?", (custno,)).fetchone()
                if cust is None:
                    ck.add("custno", "CustomerNotFound", f"customer {custno} does not exist")
            default_cur = json.loads(cust["data"]).get("currency") if cust else None
            currency = ck.currency("currency", default_cur or self.base_currency)
            amount = ck.amount("amount", currency)
            fee = ck.amount("fee_amount", currency, required=False)
            fee_acct = ck.glacnt("fee_glacnt", required=bool(fee))
            if amount is not None and amount <= 0:
                ck.add("amount", "InvalidAmount", "must be greater than zero")
            if amount is not None and fee is not None and fee > amount:
                ck.add("fee_amount", "InvalidAmount", "must not exceed the gross amount")
            apps_in = body.get("applications", [])
            apps: list[dict[str, Any]] = []
            if not isinstance(apps_in, list):
                ck.add("applications", "InvalidValue", "must be a list")
                apps_in = []
            wanted_type = "invoice" if receipt_type == "receipt" else "credit_memo"
            for i, app in enumerate(apps_in):
                if not isinstance(app, dict):
                    ck.add(f"applications[{i}]", "InvalidValue", "must be an object")
                    continue
                ac = Checker(app, {"invno", "amount"}, prefix=f"applications[{i}].")
                invno = ac.key_code("invno")
                app_amount = ac.amount("amount", currency)
                if invno:
                    inv = c.execute("SELECT * FROM invoices WHERE invno = ?", (invno,)).fetchone()
                    if inv is None:
                        ac.add("invno", "InvoiceNotFound", f"document {invno} does not exist")
                    elif inv["custno"] != custno or inv["doc_type"] != wanted_type:
                        ac.add("invno", "InvalidValue", f"{invno} is not a {wanted_type} of customer {custno}")
                    elif json.loads(inv["data"])["currency"] != currency:
                        ac.add("invno", "InvalidCurrency", f"{invno} is not in {currency}")
                    elif app_amount is not None and app_amount > inv["balance"]:
                        ac.add(
                            "amount",
                            "OverApplied",
                            f"{_money(app_amount, currency)} exceeds the open balance"
                            f" {_money(inv['balance'], currency)} of {invno}",
                        )
                ck.details.extend(ac.details)
                if invno and app_amount is not None:
                    apps.append({"invno": invno, "amount": app_amount})
            applied = sum(a["amount"] for a in apps)
            if amount is not None and applied > amount:
                ck.add(
                    "applications",
                    "OverApplied",
                    f"applications total {_money(applied, currency)} exceeds the receipt amount {_money(amount, currency)}",
                    applied=_money(applied, currency),
                )
            accounts = [("deposit_glacnt", deposit), ("ar_glacnt", ar)] + ([("fee_glacnt", fee_acct)] if fee else [])
            self._check_accounts(c, [(f, a) for f, a in accounts if a], ck.details)
            period = self._check_period(c, "receipt_date", receipt_date, ck.details) if receipt_date else None
            ck.raise_if_any()
            assert amount is not None and fee is not None and currency and period and deposit and ar and receipt_date
            receipt_no = f"CR{self._next(c, 'receipt_no'):06d}"
            record = {
                "receipt_no": receipt_no,
                "receipt_type": receipt_type,
                "custno": custno,
                "receipt_date": receipt_date,
                "period": period,
                "currency": currency,
                "amount": amount,
                "fee_amount": fee,
                "net_amount": amount - fee,
                "deposit_glacnt": deposit,
                "fee_glacnt": fee_acct,
                "ar_glacnt": ar,
                "applications": apps,
                "reference": reference,
                "description": description,
                "external_ref": external_ref,
                "created_at": now_utc(),
                "created_by": user,
            }
            sign = 1 if receipt_type == "receipt" else -1
            legs: list[tuple[str, int, str | None]] = [(deposit, sign * (amount - fee), description)]
            if fee:
                legs.append((fee_acct or "", sign * fee, "fee"))
            legs.append((ar, -sign * amount, description))
            self._insert_postings(
                c,
                posting_date=receipt_date,
                period=period,
                currency=currency,
                source="CR",
                doc_type="cash_receipt" if receipt_type == "receipt" else "refund",
                doc_no=receipt_no,
                external_ref=external_ref,
                legs=legs,
            )
            for a in apps:
                c.execute("UPDATE invoices SET balance = balance - ? WHERE invno = ?", (a["amount"], a["invno"]))
            c.execute(
                "INSERT INTO cash_receipts VALUES (?, ?, ?, ?, ?)",
                (receipt_no, external_ref, custno, receipt_date, json.dumps(record)),
            )
            return self._render_receipt(
                c.execute("SELECT * FROM cash_receipts WHERE receipt_no = ?", (receipt_no,)).fetchone()
            )

    def get_cash_receipt(self, receipt_no: str) -> dict[str, Any]:
        """One cash receipt or 404."""
        with self._tx() as c:
            row = c.execute("SELECT * FROM cash_receipts WHERE receipt_no = ?", (receipt_no,)).fetchone()
        if row is None:
            raise not_found("Cash receipt", receipt_no)
        return self._render_receipt(row)

    def list_cash_receipts(self, filters: dict[str, Any], top: int, skip: int) -> tuple[list[dict[str, Any]], int]:
        """Cash receipts by number; filters `external_ref`, `custno`, `from`, `to` (receipt_date)."""
        where, params = self._where(filters, ("external_ref", "custno"), "receipt_date")
        with self._tx() as c:
            rows, count = self._page(c, "cash_receipts", where, params, "receipt_no", top, skip)
        return [self._render_receipt(r) for r in rows], count

    # -- journal entries -----------------------------------------------------------------------------

    @staticmethod
    def _render_je(row: sqlite3.Row) -> dict[str, Any]:
        d = json.loads(row["data"])
        cur = d["currency"]
        lines = [{**ln, "debit": _money(ln["debit"], cur), "credit": _money(ln["credit"], cur)} for ln in d["lines"]]
        return {
            **d,
            "lines": lines,
            "total_debit": _money(d["total_debit"], cur),
            "total_credit": _money(d["total_credit"], cur),
            "status": row["status"],
            "reverses": row["reverses"],
            "reversed_by": row["reversed_by"],
        }

    def create_journal_entry(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        """Validate and post a balanced journal entry."""
        allowed = {"journal", "posting_date", "description", "reference", "currency", "lines", "external_ref"}
        ck = Checker(body, allowed)
        journal = ck.choice("journal", JOURNALS, default="GJ")
        posting_date = ck.date("posting_date")
        description = ck.string("description", max_len=60)
        reference = ck.string("reference", max_len=30)
        external_ref = ck.string("external_ref", max_len=64)
        currency = ck.currency("currency", self.base_currency)
        with self._tx() as c:
            self._duplicate_ref(c, "journal_entries", "batch_no", external_ref)
            lines_in = body.get("lines")
            if not isinstance(lines_in, list) or not 2 <= len(lines_in) <= 500:
                ck.add("lines", "InvalidValue", "must be a list of 2 to 500 lines")
                lines_in = []
            lines: list[dict[str, Any]] = []
            accounts: list[tuple[str, str]] = []
            for i, line in enumerate(lines_in):
                if not isinstance(line, dict):
                    ck.add(f"lines[{i}]", "InvalidValue", "must be an object")
                    continue
                lc = Checker(line, {"glacnt", "debit", "credit", "memo"}, prefix=f"lines[{i}].")
                glacnt = lc.glacnt("glacnt")
                debit = lc.amount("debit", currency, required=False)
                credit = lc.amount("credit", currency, required=False)
                memo = lc.string("memo", max_len=120)
                if debit is not None and credit is not None and (debit > 0) == (credit > 0):
                    lc.add("debit", "InvalidAmount", "exactly one of debit and credit must be greater than zero")
                if glacnt:
                    accounts.append((f"lines[{i}].glacnt", glacnt))
                ck.details.extend(lc.details)
                lines.append({"line_no": i + 1, "glacnt": glacnt, "debit": debit, "credit": credit, "memo": memo})
            self._check_accounts(c, accounts, ck.details)
            period = self._check_period(c, "posting_date", posting_date, ck.details) if posting_date else None
            ck.raise_if_any()
            total_debit = sum(ln["debit"] for ln in lines)
            total_credit = sum(ln["credit"] for ln in lines)
            assert currency and journal and posting_date and period
            if total_debit != total_credit:
                diff = total_debit - total_credit
                raise record_invalid(
                    [
                        Detail(
                            "lines",
                            "Unbalanced",
                            f"debits {_money(total_debit, currency)} and credits {_money(total_credit, currency)}"
                            f" differ by {_money(diff, currency)} {currency}",
                            {
                                "total_debit": _money(total_debit, currency),
                                "total_credit": _money(total_credit, currency),
                                "difference": _money(diff, currency),
                            },
                        )
                    ]
                )
            return self._insert_je(
                c,
                user=user,
                journal=journal,
                posting_date=posting_date,
                period=period,
                description=description,
                reference=reference,
                currency=currency,
                external_ref=external_ref,
                lines=lines,
                reverses=None,
            )

    def _insert_je(self, c: sqlite3.Connection, *, user: str, reverses: str | None, **fields: Any) -> dict[str, Any]:
        batch_no = f"{fields['journal']}{self._next(c, 'batch_no'):06d}"
        lines = fields["lines"]
        record = {
            "batch_no": batch_no,
            **fields,
            "total_debit": sum(ln["debit"] for ln in lines),
            "total_credit": sum(ln["credit"] for ln in lines),
            "created_at": now_utc(),
            "created_by": user,
        }
        self._insert_postings(
            c,
            posting_date=fields["posting_date"],
            period=fields["period"],
            currency=fields["currency"],
            source=fields["journal"],
            doc_type="journal_entry",
            doc_no=batch_no,
            external_ref=fields["external_ref"],
            legs=[(ln["glacnt"], ln["debit"] - ln["credit"], ln["memo"]) for ln in lines],
        )
        c.execute(
            "INSERT INTO journal_entries VALUES (?, ?, ?, ?, 'posted', ?, NULL, ?)",
            (batch_no, fields["external_ref"], fields["posting_date"], fields["journal"], reverses, json.dumps(record)),
        )
        return self._render_je(c.execute("SELECT * FROM journal_entries WHERE batch_no = ?", (batch_no,)).fetchone())

    def reverse_journal_entry(self, batch_no: str, body: dict[str, Any], user: str) -> dict[str, Any]:
        """Post the mirror of an entry (debits and credits swapped); an entry is reversed at most once."""
        ck = Checker(body, {"posting_date", "description", "reference", "external_ref"})
        posting_date = ck.date("posting_date", required=False)
        description = ck.string("description", max_len=60)
        reference = ck.string("reference", max_len=30)
        external_ref = ck.string("external_ref", max_len=64)
        with self._tx() as c:
            row = c.execute("SELECT * FROM journal_entries WHERE batch_no = ?", (batch_no,)).fetchone()
            if row is None:
                raise not_found("Journal entry", batch_no)
            if row["reversed_by"]:
                raise ApiError(
                    409,
                    "AlreadyReversed",
                    f"journal entry {batch_no} was already reversed by {row['reversed_by']}",
                    [Detail("batch_no", "AlreadyReversed", "already reversed", {"existing_id": row["reversed_by"]})],
                )
            self._duplicate_ref(c, "journal_entries", "batch_no", external_ref)
            original = json.loads(row["data"])
            posting_date = posting_date or original["posting_date"]
            period = self._check_period(c, "posting_date", posting_date, ck.details)
            ck.raise_if_any()
            lines = [
                {**ln, "debit": ln["credit"], "credit": ln["debit"], "line_no": i}
                for i, ln in enumerate(original["lines"], start=1)
            ]
            reversal = self._insert_je(
                c,
                user=user,
                journal=original["journal"],
                posting_date=posting_date,
                period=period,
                description=description or f"Reversal of {batch_no}"[:60],
                reference=reference or original.get("reference"),
                currency=original["currency"],
                external_ref=external_ref,
                lines=lines,
                reverses=batch_no,
            )
            c.execute(
                "UPDATE journal_entries SET status = 'reversed', reversed_by = ? WHERE batch_no = ?",
                (reversal["batch_no"], batch_no),
            )
            return reversal

    def get_journal_entry(self, batch_no: str) -> dict[str, Any]:
        """One journal entry or 404."""
        with self._tx() as c:
            row = c.execute("SELECT * FROM journal_entries WHERE batch_no = ?", (batch_no,)).fetchone()
        if row is None:
            raise not_found("Journal entry", batch_no)
        return self._render_je(row)

    def list_journal_entries(self, filters: dict[str, Any], top: int, skip: int) -> tuple[list[dict[str, Any]], int]:
        """Journal entries by batch number; filters `external_ref`, `journal`, `status`, `from`, `to`."""
        where, params = self._where(filters, ("external_ref", "journal", "status"), "posting_date")
        with self._tx() as c:
            # Batch numbers carry the journal prefix, so creation order is the rowid, not the key.
            rows, count = self._page(c, "journal_entries", where, params, "rowid", top, skip)
        return [self._render_je(r) for r in rows], count

    # -- GL postings ----------------------------------------------------------------------------------

    @staticmethod
    def _render_posting(row: sqlite3.Row) -> dict[str, Any]:
        cur = row["currency"]
        out = {k: row[k] for k in row.keys()}
        out["debit"] = _money(row["debit"], cur)
        out["credit"] = _money(row["credit"], cur)
        out["batch_no"] = row["doc_no"]
        return out

    def list_gl_postings(self, filters: dict[str, Any], top: int, skip: int) -> tuple[list[dict[str, Any]], int]:
        """Every posting in order; filters glacnt, currency, source, doc_type, doc_no, external_ref, from, to."""
        where, params = self._where(
            filters, ("glacnt", "currency", "source", "doc_type", "doc_no", "external_ref"), "posting_date"
        )
        with self._tx() as c:
            rows, count = self._page(c, "gl_postings", where, params, "id", top, skip)
        return [self._render_posting(r) for r in rows], count

    # -- idempotency -------------------------------------------------------------------------------

    def get_idempotent(self, user: str, key: str) -> dict[str, Any] | None:
        """The stored response for a key (younger than 24 h), or None."""
        with self._tx() as c:
            c.execute("DELETE FROM idempotency WHERE created < ?", (time.time() - IDEMPOTENCY_TTL_S,))
            row = c.execute("SELECT * FROM idempotency WHERE user = ? AND key = ?", (user, key)).fetchone()
        if row is None:
            return None
        return {
            "fingerprint": row["fingerprint"],
            "status": row["status"],
            "headers": json.loads(row["headers"]),
            "body": row["body"],
        }

    def put_idempotent(
        self, user: str, key: str, fingerprint: str, status: int, headers: dict[str, str], body: str
    ) -> None:
        """Store a response to replay for the same key."""
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?, ?, ?)",
                (user, key, fingerprint, status, json.dumps(headers), body, time.time()),
            )


def _quantity(value: Any) -> tuple[int, int] | None:
    """A positive quantity as (numerator, scale) so quantity × price stays exact; None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value, 1) if value > 0 else None
    if not isinstance(value, str) or not value or value.count(".") > 1:
        return None
    whole, _, frac = value.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 4:
        return None
    num, scale = int(whole + frac), 10 ** len(frac)
    return (num, scale) if num > 0 else None


__all__ = ["DEFAULT_CHART", "SageStore"]
