"""Planned payloads (the Sage Pro contract's shape, which the ledger stores and hashes) as Intacct bodies.

Pure functions, so what is posted where can be read and unit-tested:

* journal entry → `general-ledger/journal-entry`: `glJournal.id` = the mapping's journal (ST),
  `referenceNumber` = the (versioned) Stripe id, one line per account with `txnType` debit|credit and
  the positive `txnAmount`, every line in the location of the entry's settlement currency (Intacct's
  journal-entry lines take no currency: each currency posts in an entity/location with that base
  currency);
* invoice → `accounts-receivable/invoice`: `invoiceNumber` = `referenceNumber` = the charge id, one line
  per revenue line plus one per tax amount (Intacct books Dr AR from the customer's AR account);
* cash receipt → `accounts-receivable/payment` into the clearing account as undeposited funds
  (`documentNumber` = the Stripe balance transaction id), plus the Stripe fee as a journal entry
  `Dr fee / Cr clearing` with `referenceNumber` = `<txn>~fee`;
* customer → `accounts-receivable/customer`: `id` = custno, `name` = company, the default contact's
  email, phone and mailing address, and `notes` = `stripe:<cus_…>` (the Stripe id, searchable).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

STRIPE_NOTE = "stripe:"
PAYMENT_REFERENCE_MAX = 21  # accounts-receivable/payment.referenceNumber maxLength


def location_for(currency: str, locations: dict[str, str] | None = None) -> str:
    """The Intacct location (entity) whose base currency is `currency` (default: the ISO code)."""
    return (locations or {}).get(currency.lower()) or currency.upper()


def _dims(location: str) -> dict[str, Any]:
    return {"location": {"id": location}}


def journal_entry(payload: dict[str, Any], reference: str, locations: dict[str, str] | None = None) -> dict[str, Any]:
    """A Sage Pro journal entry body as an Intacct journal entry."""
    loc = location_for(payload["currency"], locations)
    lines = []
    for ln in payload["lines"]:
        debit, credit = Decimal(ln["debit"]), Decimal(ln["credit"])
        kind, amount = ("debit", ln["debit"]) if debit > 0 else ("credit", ln["credit"])
        if debit > 0 and credit > 0:
            raise ValueError(f"{reference}: a line has both a debit and a credit")
        line = {"txnType": kind, "txnAmount": amount, "glAccount": {"id": ln["glacnt"]}, "dimensions": _dims(loc)}
        if ln.get("memo"):
            line["description"] = ln["memo"]
        lines.append(line)
    return {
        "glJournal": {"id": payload.get("journal") or "ST"},
        "postingDate": payload["posting_date"],
        "description": payload.get("description") or reference,
        "referenceNumber": reference,
        "lines": lines,
    }


def reversal(entry: dict[str, Any], reference: str, posting_date: str, description: str) -> dict[str, Any]:
    """The mirror of a posted Intacct journal entry (debits ↔ credits), dated `posting_date`."""
    lines = []
    for ln in entry["lines"]:
        line = {
            "txnType": "credit" if ln["txnType"] == "debit" else "debit",
            "txnAmount": ln["txnAmount"],
            "glAccount": {"id": ln["glAccount"]["id"]},
        }
        if ln.get("dimensions", {}).get("location"):
            line["dimensions"] = _dims(ln["dimensions"]["location"]["id"])
        lines.append(line)
    return {
        "glJournal": {"id": (entry.get("glJournal") or {}).get("id") or "ST"},
        "postingDate": posting_date,
        "description": description,
        "referenceNumber": reference,
        "lines": lines,
    }


def invoice(payload: dict[str, Any], reference: str, locations: dict[str, str] | None = None) -> dict[str, Any]:
    """A Sage Pro invoice body as an Intacct AR invoice (revenue and tax as separate lines)."""
    cur = payload["currency"]
    loc = location_for(cur, locations)
    lines = []
    for ln in payload["lines"]:
        amount = Decimal(ln["unit_price"]) * Decimal(ln["quantity"])
        places = -Decimal(ln["unit_price"]).as_tuple().exponent if "." in ln["unit_price"] else 0
        lines.append(
            {
                "txnAmount": f"{amount:.{places}f}",
                "glAccount": {"id": ln["revenue_glacnt"]},
                "memo": ln.get("description") or reference,
                "dimensions": _dims(loc),
            }
        )
        if ln.get("tax_amount") and Decimal(ln["tax_amount"]) > 0:
            lines.append(
                {
                    "txnAmount": ln["tax_amount"],
                    "glAccount": {"id": ln["tax_glacnt"]},
                    "memo": f"Tax: {ln.get('description') or reference}"[:100],
                    "dimensions": _dims(loc),
                }
            )
    return {
        "invoiceNumber": reference,
        "referenceNumber": reference,
        "customer": {"id": payload["custno"]},
        "invoiceDate": payload["invdate"],
        "dueDate": payload["invdate"],
        "description": payload.get("description") or reference,
        "currency": {"txnCurrency": cur.upper()},
        "lines": lines,
    }


def payment(payload: dict[str, Any], reference: str) -> dict[str, Any]:
    """A Sage Pro cash receipt as an Intacct AR payment of the gross into the clearing account."""
    return {
        "customer": {"id": payload["custno"]},
        "undepositedGLAccount": {"id": payload["deposit_glacnt"]},
        "txnCurrency": {"currency": payload["currency"].upper()},
        "paymentSummary": {"receiptDate": payload["receipt_date"]},
        "paymentMethod": "creditCard",
        "documentNumber": reference,
        "referenceNumber": (payload.get("reference") or reference)[:PAYMENT_REFERENCE_MAX],
        "description": payload.get("description") or reference,
        "paymentDetails": [
            {"arInvoice": {"key": str(a["invno"])}, "txnCurrency": {"paymentAmount": a["amount"]}}
            for a in payload.get("applications") or []
        ],
    }


def fee_entry(
    payload: dict[str, Any], reference: str, locations: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """The Stripe fee of a cash receipt as `Dr fee / Cr clearing`, or None when there is no fee."""
    fee = payload.get("fee_amount") or "0"
    if Decimal(fee) == 0:
        return None
    loc = location_for(payload["currency"], locations)
    return {
        "glJournal": {"id": "ST"},
        "postingDate": payload["receipt_date"],
        "description": f"Stripe fee {payload.get('reference') or reference}"[:60],
        "referenceNumber": reference,
        "lines": [
            {
                "txnType": "debit",
                "txnAmount": fee,
                "glAccount": {"id": payload["fee_glacnt"]},
                "dimensions": _dims(loc),
            },
            {
                "txnType": "credit",
                "txnAmount": fee,
                "glAccount": {"id": payload["deposit_glacnt"]},
                "dimensions": _dims(loc),
            },
        ],
    }


def customer(payload: dict[str, Any], stripe_id: str | None = None) -> dict[str, Any]:
    """A Sage Pro customer body (create or partial update) as an Intacct customer."""
    body: dict[str, Any] = {}
    if "custno" in payload:
        body["id"] = payload["custno"]
    if "company" in payload:
        body["name"] = payload["company"]
    if "currency" in payload:
        body["currency"] = payload["currency"]
    if stripe_id:
        body["notes"] = f"{STRIPE_NOTE}{stripe_id}"
    contact: dict[str, Any] = {}
    if "email" in payload:
        contact["email1"] = payload["email"]
    if "phone" in payload:
        contact["phone1"] = payload["phone"]
    address = {
        dst: payload[src]
        for src, dst in (
            ("address1", "addressLine1"),
            ("address2", "addressLine2"),
            ("city", "city"),
            ("state", "state"),
            ("zip", "postCode"),
            ("country", "isoCountryCode"),
        )
        if src in payload
    }
    if address:
        contact["mailingAddress"] = address
    if contact:
        body["contacts"] = {"default": contact}
    return body


def customer_record(rec: dict[str, Any]) -> dict[str, Any]:
    """An Intacct customer read back in the Sage Pro customer shape (for the Sage → Stripe sync)."""
    contact = ((rec.get("contacts") or {}).get("default")) or {}
    addr = contact.get("mailingAddress") or {}
    notes = rec.get("notes") or ""
    return {
        "custno": rec.get("id"),
        "company": rec.get("name"),
        "email": contact.get("email1"),
        "phone": contact.get("phone1"),
        "address1": addr.get("addressLine1"),
        "address2": addr.get("addressLine2"),
        "city": addr.get("city"),
        "state": addr.get("state"),
        "zip": addr.get("postCode"),
        "country": addr.get("isoCountryCode") or addr.get("country"),
        "currency": rec.get("currency"),
        "external_ref": notes[len(STRIPE_NOTE) :] if notes.startswith(STRIPE_NOTE) else None,
        "updated_at": (rec.get("audit") or {}).get("modifiedDateTime"),
    }
