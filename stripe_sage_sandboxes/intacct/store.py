"""The Intacct emulator's books, in memory: accounts, locations, periods, journal entries (and the GL
batches AR documents create), customers, AR invoices and payments, with Intacct's validation rules.

Errors are raised as `IaError` and rendered as Intacct's `ia::error` envelope by `app.py`. The
`errorId`s are the emulator's own (Sage does not publish a catalogue); the adapter classifies them by
errorId first and by target/message after, so a real company's ids map as well (docs/intacct.md).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

# Chart of accounting.md and mapping.yaml (the same postable codes the Sage Pro sandbox seeds, so every
# category of the default mapping, e.g. adjustments to 6900, posts); (id, name, accountType).
DEFAULT_CHART: list[tuple[str, str, str]] = [
    ("1000", "Assets (header)", "balanceSheet"),
    ("1010", "Operating Bank", "balanceSheet"),
    ("1150", "Stripe Clearing", "balanceSheet"),
    ("1170", "Stripe Reserves Held", "balanceSheet"),
    ("1175", "Stripe Issuing Funds Held", "balanceSheet"),
    ("1200", "Accounts Receivable", "balanceSheet"),
    ("2200", "Sales Tax Payable", "balanceSheet"),
    ("2300", "Due to Connected Accounts", "balanceSheet"),
    ("2400", "Stripe Capital Financing", "balanceSheet"),
    ("2500", "Unapplied Customer Funds", "balanceSheet"),
    ("4000", "Sales Revenue", "incomeStatement"),
    ("4050", "Sales Refunds", "incomeStatement"),
    ("4060", "Chargebacks", "incomeStatement"),
    ("4100", "Platform Fee Revenue", "incomeStatement"),
    ("6100", "Merchant Processing Fees", "incomeStatement"),
    ("6110", "Dispute Fees", "incomeStatement"),
    ("6300", "Stripe Issuing Card Spend", "incomeStatement"),
    ("6400", "Climate Contributions", "incomeStatement"),
    ("6900", "Stripe Adjustments", "incomeStatement"),
    ("7900", "FX Gain/Loss", "incomeStatement"),
    ("9999", "Stripe Suspense", "balanceSheet"),
]
HEADER_ACCOUNTS = {"1000"}  # disallowDirectPosting
# Locations are entities with their own base currency: the pipeline posts each settlement currency in its own.
DEFAULT_CURRENCIES = (
    "USD",
    "EUR",
    "GBP",
    "CAD",
    "AUD",
    "JPY",
    "CHF",
    "SEK",
    "DKK",
    "NOK",
    "NZD",
    "SGD",
    "HKD",
    "MXN",
    "BRL",
    "PLN",
    "CZK",
    "HUF",
    "KWD",
    "BHD",
    "JOD",
    "OMR",
    "TND",
    "KRW",
    "INR",
)
DECIMALS = {
    "JPY": 0,
    "KRW": 0,
    "VND": 0,
    "CLP": 0,
    "ISK": 0,
    "UGX": 0,
    "KWD": 3,
    "BHD": 3,
    "JOD": 3,
    "OMR": 3,
    "TND": 3,
}
JOURNALS = {"ST": "Stripe activity", "GJ": "General journal", "ARJ": "AR journal", "CRJ": "Cash receipts journal"}
AR_ACCOUNT = "1200"
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class IaError(Exception):
    """An Intacct error: HTTP status, top-level code/message/errorId, and per-field details."""

    def __init__(
        self, status: int, code: str, message: str, error_id: str, details: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.error_id = status, code, message, error_id
        self.details = details or []


def invalid(message: str, details: list[tuple[str, str, str]]) -> IaError:
    """400 invalidRequest with details (errorId, target, message)."""
    return IaError(
        400,
        "invalidRequest",
        message,
        "REST-1064",
        [{"code": "invalidRequest", "errorId": e, "target": t, "message": m} for e, t, m in details],
    )


def now_iso() -> str:
    """RFC 3339 UTC timestamp, seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _amount(value: Any, currency: str, target: str) -> Decimal:
    try:
        amt = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise invalid(
            "Payload contains errors", [("EMU-AMOUNT", target, f"{value!r} is not a decimal amount")]
        ) from None
    places = DECIMALS.get(currency, 2)
    if amt <= 0 or amt != amt.quantize(Decimal(1).scaleb(-places)) or not isinstance(value, str):
        raise invalid(
            "Payload contains errors",
            [
                (
                    "EMU-AMOUNT",
                    target,
                    f"{value!r}: amounts are positive decimal strings with at most {places} decimals in {currency}",
                )
            ],
        )
    return amt


@dataclass
class Books:
    """Everything one emulated company holds."""

    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    locations: dict[str, str] = field(default_factory=dict)  # location id -> base currency
    closed_periods: set[str] = field(default_factory=set)  # "YYYY-MM"
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> journal entry (with lines)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> customer
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    next_key: int = 100


class IntacctStore:
    """Thread-safe books with Intacct's create rules."""

    def __init__(
        self,
        closed_periods: list[str] | None = None,
        currencies: tuple[str, ...] = DEFAULT_CURRENCIES,
        inactive_accounts: tuple[str, ...] = (),
    ) -> None:
        self.lock = threading.RLock()
        self.books = Books()
        for code, name, kind in DEFAULT_CHART:
            self.books.accounts[code] = {
                "key": str(len(self.books.accounts) + 1),
                "id": code,
                "name": name,
                "accountType": kind,
                "status": "inactive" if code in inactive_accounts else "active",
                "disallowDirectPosting": code in HEADER_ACCOUNTS,
                "href": f"/objects/general-ledger/account/{code}",
            }
        self.books.locations = {c: c for c in currencies}
        self.books.closed_periods = set(closed_periods or [])

    def _key(self) -> str:
        self.books.next_key += 1
        return str(self.books.next_key)

    # -- rules shared by every document --------------------------------------------------------------

    def _date(self, value: Any, target: str) -> str:
        if not isinstance(value, str) or not DATE_RE.match(value):
            raise invalid("Payload contains errors", [("EMU-DATE", target, f"{value!r} is not a date (YYYY-MM-DD)")])
        try:
            date.fromisoformat(value)
        except ValueError:
            raise invalid("Payload contains errors", [("EMU-DATE", target, f"{value!r} is not a date")]) from None
        if value[:7] in self.books.closed_periods:
            raise invalid(
                "Could not create record",
                [("GL-PERIOD-CLOSED", target, f"The period for {value} is closed; open it or post later")],
            )
        return value

    def _account(self, ref: Any, target: str) -> dict[str, Any]:
        code = (ref or {}).get("id") if isinstance(ref, dict) else None
        acct = self.books.accounts.get(str(code)) if code is not None else None
        if acct is None:
            raise invalid(
                "Could not create record",
                [("GL-ACCOUNT-INVALID", target, f"GL account {code!r} is not a valid account")],
            )
        if acct["status"] != "active":
            raise invalid(
                "Could not create record", [("GL-ACCOUNT-INACTIVE", target, f"GL account {code} is inactive")]
            )
        if acct["disallowDirectPosting"]:
            raise invalid(
                "Could not create record",
                [("GL-ACCOUNT-NO-DIRECT-POSTING", target, f"GL account {code} does not allow direct posting")],
            )
        return acct

    def _location(self, dims: Any, target: str) -> str:
        loc = (((dims or {}).get("location") or {}).get("id")) if isinstance(dims, dict) else None
        if loc is None or loc not in self.books.locations:
            raise invalid("Could not create record", [("EMU-LOCATION", target, f"location {loc!r} does not exist")])
        return loc

    # -- journal entries -----------------------------------------------------------------------------

    def create_journal_entry(self, body: dict[str, Any], module: str = "2.GL") -> dict[str, Any]:
        """Validate and post a journal entry (balanced, open period, valid accounts, one location)."""
        with self.lock:
            missing = [f for f in ("glJournal", "postingDate", "description", "lines") if f not in body]
            if missing:
                raise invalid("Payload contains errors", [("REST-1013", f"/{f}", f"{f} is required") for f in missing])
            journal = (body["glJournal"] or {}).get("id")
            if journal not in JOURNALS:
                raise invalid(
                    "Could not create record", [("EMU-JOURNAL", "/glJournal/id", f"journal {journal!r} does not exist")]
                )
            posting_date = self._date(body["postingDate"], "/postingDate")
            lines = body["lines"]
            if not isinstance(lines, list) or len(lines) < 2:
                raise invalid("Payload contains errors", [("EMU-LINES", "/lines", "at least two lines are required")])
            locations = {
                self._location(ln.get("dimensions"), f"/lines/{i}/dimensions/location/id") for i, ln in enumerate(lines)
            }
            if len(locations) != 1:
                raise invalid(
                    "Could not create record",
                    [("EMU-LOCATION", "/lines", "all lines of an entry must be in one location")],
                )
            location = locations.pop()
            currency = self.books.locations[location]
            debit = credit = Decimal(0)
            stored_lines = []
            for i, ln in enumerate(lines):
                for f in ("txnAmount", "txnType", "glAccount"):
                    if f not in ln:
                        raise invalid("Payload contains errors", [("REST-1013", f"/lines/{i}/{f}", f"{f} is required")])
                if ln["txnType"] not in ("debit", "credit"):
                    raise invalid(
                        "Payload contains errors",
                        [("EMU-TXNTYPE", f"/lines/{i}/txnType", "txnType is debit or credit")],
                    )
                self._account(ln["glAccount"], f"/lines/{i}/glAccount/id")
                amt = _amount(ln["txnAmount"], currency, f"/lines/{i}/txnAmount")
                if ln["txnType"] == "debit":
                    debit += amt
                else:
                    credit += amt
                stored_lines.append({**ln, "lineNumber": i + 1})
            if debit != credit:
                raise invalid(
                    "Could not create record",
                    [
                        (
                            "GL-UNBALANCED",
                            "/lines",
                            f"Debits ({debit}) and credits ({credit}) do not balance; difference {debit - credit}",
                        )
                    ],
                )
            key = self._key()
            entry = {
                "key": key,
                "id": key,
                "txnNumber": int(key),
                "glJournal": {"id": journal},
                "postingDate": posting_date,
                "description": body["description"],
                "referenceNumber": body.get("referenceNumber"),
                "state": "posted",
                "moduleName": module,
                "baseLocation": {"id": location},
                "_currency": currency,
                "lines": stored_lines,
                "audit": {"createdDateTime": now_iso(), "modifiedDateTime": now_iso()},
                "href": f"/objects/general-ledger/journal-entry/{key}",
            }
            self.books.entries[key] = entry
            return entry

    def gl_lines(self) -> list[dict[str, Any]]:
        """Every posted GL line, flattened as the `general-ledger/journal-entry-line` query object."""
        with self.lock:
            out = []
            for e in self.books.entries.values():
                for ln in e["lines"]:
                    out.append(
                        {
                            "key": f"{e['key']}.{ln['lineNumber']}",
                            "id": f"{e['key']}.{ln['lineNumber']}",
                            "lineNumber": ln["lineNumber"],
                            "txnType": ln["txnType"],
                            "txnAmount": ln["txnAmount"],
                            "glAccount": {"id": ln["glAccount"]["id"]},
                            "dimensions": {"location": {"id": e["baseLocation"]["id"]}},
                            "journalEntry": {
                                "key": e["key"],
                                "postingDate": e["postingDate"],
                                "referenceNumber": e["referenceNumber"],
                                "glJournal": e["glJournal"],
                            },
                            "state": e["state"],
                        }
                    )
            return out

    # -- customers -----------------------------------------------------------------------------------

    def create_customer(self, body: dict[str, Any]) -> dict[str, Any]:
        """A customer; `id` must be unique (customers are found by id)."""
        with self.lock:
            if not body.get("name"):
                raise invalid("Payload contains errors", [("REST-1013", "/name", "name is required")])
            cid = body.get("id") or f"C-{self.books.next_key + 1:05d}"
            if any(c["id"] == cid for c in self.books.customers.values()):
                raise invalid(
                    "Could not create record",
                    [("AR-CUSTOMER-DUPLICATE", "/id", f"A customer with ID {cid} already exists")],
                )
            key = self._key()
            rec = {
                **body,
                "key": key,
                "id": cid,
                "status": body.get("status", "active"),
                "audit": {"createdDateTime": now_iso(), "modifiedDateTime": now_iso()},
                "href": f"/objects/accounts-receivable/customer/{key}",
            }
            self.books.customers[key] = rec
            return rec

    def update_customer(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH: merge the given fields (contacts merged one level down)."""
        with self.lock:
            rec = self.books.customers.get(key)
            if rec is None:
                raise IaError(404, "notFound", f"customer {key} not found", "REST-1015")
            for k, v in body.items():
                if k in ("key", "id", "audit", "href"):
                    continue
                if isinstance(v, dict) and isinstance(rec.get(k), dict):
                    rec[k] = _merge(rec[k], v)
                else:
                    rec[k] = v
            rec["audit"] = {**rec["audit"], "modifiedDateTime": now_iso()}
            return rec

    def customer_by_id(self, cid: str) -> dict[str, Any] | None:
        """The customer with this id, or None."""
        return next((c for c in self.books.customers.values() if c["id"] == cid), None)

    # -- AR invoices and payments --------------------------------------------------------------------

    def create_invoice(self, body: dict[str, Any]) -> dict[str, Any]:
        """An AR invoice: Dr AR total / Cr each line's account, posted to the GL in the AR journal."""
        with self.lock:
            for f in ("invoiceDate", "dueDate"):
                if f not in body:
                    raise invalid("Payload contains errors", [("REST-1013", f"/{f}", f"{f} is required")])
            cust = self.customer_by_id(((body.get("customer") or {}).get("id")) or "")
            if cust is None:
                raise invalid(
                    "Could not create record",
                    [
                        (
                            "AR-CUSTOMER-INVALID",
                            "/customer/id",
                            f"customer {(body.get('customer') or {}).get('id')!r} does not exist",
                        )
                    ],
                )
            number = body.get("invoiceNumber")
            if number and any(i.get("invoiceNumber") == number for i in self.books.invoices.values()):
                raise invalid(
                    "Could not create record",
                    [("AR-INVOICE-DUPLICATE", "/invoiceNumber", f"invoice number {number} is already used")],
                )
            inv_date = self._date(body["invoiceDate"], "/invoiceDate")
            currency = ((body.get("currency") or {}).get("txnCurrency") or "").upper()
            lines = body.get("lines") or []
            if not lines:
                raise invalid("Payload contains errors", [("EMU-LINES", "/lines", "an invoice needs lines")])
            gl = []
            total = Decimal(0)
            location = None
            for i, ln in enumerate(lines):
                self._account(ln.get("glAccount"), f"/lines/{i}/glAccount/id")
                location = self._location(ln.get("dimensions"), f"/lines/{i}/dimensions/location/id")
                if self.books.locations[location] != currency:
                    raise invalid(
                        "Could not create record",
                        [
                            (
                                "EMU-CURRENCY",
                                "/currency/txnCurrency",
                                f"{currency!r} is not the currency of location {location}",
                            )
                        ],
                    )
                amt = _amount(ln.get("txnAmount"), currency, f"/lines/{i}/txnAmount")
                total += amt
                gl.append(
                    {
                        "txnType": "credit",
                        "txnAmount": ln["txnAmount"],
                        "glAccount": {"id": ln["glAccount"]["id"]},
                        "dimensions": {"location": {"id": location}},
                    }
                )
            places = DECIMALS.get(currency, 2)
            total_s = f"{total:.{places}f}"
            gl.insert(
                0,
                {
                    "txnType": "debit",
                    "txnAmount": total_s,
                    "glAccount": {"id": AR_ACCOUNT},
                    "dimensions": {"location": {"id": location}},
                },
            )
            key = self._key()
            batch = self.create_journal_entry(
                {
                    "glJournal": {"id": "ARJ"},
                    "postingDate": inv_date,
                    "description": f"AR invoice {number or key}",
                    "referenceNumber": number,
                    "lines": gl,
                },
                module="4.AR",
            )
            rec = {
                **body,
                "key": key,
                "id": key,
                "state": "posted",
                "totalTxnAmount": total_s,
                "totalTxnAmountDue": total_s,
                "_glBatchKey": batch["key"],
                "audit": {"createdDateTime": now_iso(), "modifiedDateTime": now_iso()},
                "href": f"/objects/accounts-receivable/invoice/{key}",
            }
            self.books.invoices[key] = rec
            return rec

    def create_payment(self, body: dict[str, Any]) -> dict[str, Any]:
        """An AR payment into an undeposited-funds account: Dr that account / Cr AR, applied to invoices."""
        with self.lock:
            if ("undepositedGLAccount" in body) == ("financialEntity" in body):
                raise invalid(
                    "Payload contains errors",
                    [
                        (
                            "EMU-PAYMENT",
                            "/undepositedGLAccount",
                            "exactly one of undepositedGLAccount or financialEntity",
                        )
                    ],
                )
            if "financialEntity" in body:
                raise invalid(
                    "Could not create record",
                    [
                        (
                            "EMU-PAYMENT",
                            "/financialEntity",
                            "the emulator has no bank accounts; use undepositedGLAccount",
                        )
                    ],
                )
            cust = self.customer_by_id(((body.get("customer") or {}).get("id")) or "")
            if cust is None:
                raise invalid(
                    "Could not create record", [("AR-CUSTOMER-INVALID", "/customer/id", "customer does not exist")]
                )
            receipt_date = self._date(
                (body.get("paymentSummary") or {}).get("receiptDate"), "/paymentSummary/receiptDate"
            )
            currency = ((body.get("txnCurrency") or {}).get("currency") or "").upper()
            self._account(body["undepositedGLAccount"], "/undepositedGLAccount/id")
            location = next((loc for loc, cur in self.books.locations.items() if cur == currency), None)
            if location is None:
                raise invalid(
                    "Could not create record",
                    [("EMU-CURRENCY", "/txnCurrency/currency", f"no location has base currency {currency!r}")],
                )
            total = Decimal(0)
            for i, d in enumerate(body.get("paymentDetails") or []):
                inv = self.books.invoices.get(str(((d.get("arInvoice") or {}).get("key")) or ""))
                if inv is None:
                    raise invalid(
                        "Could not create record",
                        [("AR-INVOICE-INVALID", f"/paymentDetails/{i}/arInvoice/key", "invoice does not exist")],
                    )
                amt = _amount(
                    (d.get("txnCurrency") or {}).get("paymentAmount"),
                    currency,
                    f"/paymentDetails/{i}/txnCurrency/paymentAmount",
                )
                due = Decimal(inv["totalTxnAmountDue"])
                if amt > due:
                    raise invalid(
                        "Could not create record",
                        [
                            (
                                "AR-OVERAPPLIED",
                                f"/paymentDetails/{i}/txnCurrency/paymentAmount",
                                f"payment {amt} exceeds the amount due {due}",
                            )
                        ],
                    )
                total += amt
            if total <= 0:
                raise invalid("Payload contains errors", [("EMU-PAYMENT", "/paymentDetails", "nothing is paid")])
            for d in body["paymentDetails"]:
                inv = self.books.invoices[str(d["arInvoice"]["key"])]
                left = Decimal(inv["totalTxnAmountDue"]) - Decimal(d["txnCurrency"]["paymentAmount"])
                inv["totalTxnAmountDue"] = f"{left:.{DECIMALS.get(currency, 2)}f}"
                inv["state"] = "paid" if left == 0 else "partiallyPaid"
            total_s = f"{total:.{DECIMALS.get(currency, 2)}f}"
            key = self._key()
            self.create_journal_entry(
                {
                    "glJournal": {"id": "CRJ"},
                    "postingDate": receipt_date,
                    "description": f"AR payment {body.get('documentNumber') or key}",
                    "referenceNumber": body.get("documentNumber"),
                    "lines": [
                        {
                            "txnType": "debit",
                            "txnAmount": total_s,
                            "glAccount": {"id": body["undepositedGLAccount"]["id"]},
                            "dimensions": {"location": {"id": location}},
                        },
                        {
                            "txnType": "credit",
                            "txnAmount": total_s,
                            "glAccount": {"id": AR_ACCOUNT},
                            "dimensions": {"location": {"id": location}},
                        },
                    ],
                },
                module="4.AR",
            )
            rec = {
                **body,
                "key": key,
                "id": key,
                "state": "complete",
                "audit": {"createdDateTime": now_iso(), "modifiedDateTime": now_iso()},
                "href": f"/objects/accounts-receivable/payment/{key}",
            }
            self.books.payments[key] = rec
            return rec

    # -- queries -------------------------------------------------------------------------------------

    def records(self, obj: str) -> list[dict[str, Any]]:
        """The records of a query object."""
        with self.lock:
            if obj == "general-ledger/journal-entry":
                return [e for e in self.books.entries.values() if e["moduleName"] == "2.GL"]
            if obj == "general-ledger/journal-entry-line":
                return self.gl_lines()
            if obj == "general-ledger/account":
                return list(self.books.accounts.values())
            if obj == "accounts-receivable/customer":
                return list(self.books.customers.values())
            if obj == "accounts-receivable/invoice":
                return list(self.books.invoices.values())
            if obj == "accounts-receivable/payment":
                return list(self.books.payments.values())
        raise invalid("Payload contains errors", [("EMU-QUERY-OBJECT", "/object", f"{obj!r} cannot be queried here")])


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def field_value(record: dict[str, Any], path: str) -> Any:
    """`a.b.c` of a nested record (None when missing)."""
    cur: Any = record
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur
