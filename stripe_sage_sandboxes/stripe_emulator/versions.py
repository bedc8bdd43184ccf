"""Rendering per `Stripe-Version`: objects are stored once, in the shapes of 2023-08-16, and served at
the version a request asks for, the way Stripe renders one object at many versions.

* up to 2025-03-31 (exclusive): the 2023-08-16 shapes (checked against spec3.json by the tests);
* 2025-03-31.basil and later (the installed SDK pins 2026-10-28.endive): `Charge.invoice`,
  `Invoice.charge`, `Invoice.payment_intent`, `Invoice.tax`, `Invoice.total_tax_amounts`,
  `PaymentIntent.invoice`, line items' `tax_amounts` / `price` are gone; invoices carry
  `total_taxes`, `parent`, `issuer`, and the includable `payments` (a list of InvoicePayment objects,
  returned only when expanded); line items carry `taxes`, `pricing`, `parent`, `subtotal`; charges
  carry `presentment_details`. The field set of each object is the installed SDK's typed class
  (stripe/_invoice.py, _charge.py, _invoice_payment.py, ...): a field the SDK does not know is dropped.

Emulator-only fields (a charge's `presentment_details` before it existed) are stored on the object
and removed from older renderings.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

DEFAULT_API_VERSION = "2023-08-16"  # the emulated account's default: what a request without a version gets
CURRENT_SHAPES_SINCE = "2025-03-31"

# Fields only newer versions have: stored on the object (so the data is the same at every version)
# and dropped from renderings at older versions.
NEW_FIELDS: dict[str, frozenset[str]] = {"charges": frozenset({"presentment_details"})}
# Includable fields of current versions: present only when expanded.
INCLUDABLE: dict[str, frozenset[str]] = {"invoice": frozenset({"payments"}), "charge": frozenset({"refunds"})}
# Expandable at current versions but not in 2023 (and the reverse).
EXPAND_ADDED: dict[str, frozenset[str]] = {"invoice": frozenset({"payments"})}
EXPAND_REMOVED: dict[str, frozenset[str]] = {
    "invoice": frozenset({"charge", "payment_intent"}),
    "charge": frozenset({"invoice"}),
    "payment_intent": frozenset({"invoice"}),
}


def normalise(version: str | None) -> str:
    """The version a request is served at (the account default when none is sent)."""
    return (version or "").strip() or DEFAULT_API_VERSION


def is_current(version: str | None) -> bool:
    """True when `version` renders the shapes of 2025-03-31.basil and later."""
    return normalise(version)[:10] >= CURRENT_SHAPES_SINCE


@functools.cache
def sdk_fields(object_name: str) -> frozenset[str] | None:
    """The fields the installed SDK's typed class declares for an object type (None: not typed)."""
    import stripe

    classes = {
        "charge": stripe.Charge,
        "invoice": stripe.Invoice,
        "line_item": stripe.InvoiceLineItem,
        "invoice_payment": stripe.InvoicePayment,
        "payment_intent": stripe.PaymentIntent,
        "balance_transaction": stripe.BalanceTransaction,
        "payout": stripe.Payout,
        "refund": stripe.Refund,
        "dispute": stripe.Dispute,
        "customer": stripe.Customer,
        "event": stripe.Event,
    }
    cls = classes.get(object_name)
    if cls is None:
        return None
    return frozenset(k for k in vars(cls).get("__annotations__", {}) if k != "OBJECT_NAME")


def _keep_sdk_fields(obj: dict[str, Any]) -> dict[str, Any]:
    fields = sdk_fields(obj.get("object", ""))
    if fields is None:
        return obj
    return {k: v for k, v in obj.items() if k in fields}


def old_rendering(coll: str, out: dict[str, Any]) -> dict[str, Any]:
    """A 2023-08-16 rendering: drop the fields only newer versions have."""
    for name in NEW_FIELDS.get(coll, ()):
        out.pop(name, None)
    return out


def _tax(t: dict[str, Any]) -> dict[str, Any]:
    """A 2023 `tax_amounts` entry as a current `taxes` / `total_taxes` entry."""
    return {
        "amount": t["amount"],
        "tax_behavior": "inclusive" if t.get("inclusive") else "exclusive",
        "tax_rate_details": {"tax_rate": t["tax_rate"]} if t.get("tax_rate") else None,
        "taxability_reason": t.get("taxability_reason") or "standard_rated",
        "taxable_amount": t.get("taxable_amount"),
        "type": "tax_rate_details",
    }


def _line(line: dict[str, Any], invoice_id: str) -> dict[str, Any]:
    out = dict(line)
    out["invoice"] = invoice_id
    out["taxes"] = [_tax(t) for t in line.get("tax_amounts") or []]
    out["subtotal"] = line.get("amount", 0)
    out["pretax_credit_amounts"] = [
        {"amount": d["amount"], "discount": d.get("discount"), "type": "discount"}
        for d in line.get("discount_amounts") or []
    ]
    price = line.get("price") or {}
    out["pricing"] = {
        "price_details": {"price": price.get("id"), "product": price.get("product")} if price.get("id") else None,
        "type": "price_details",
        "unit_amount_decimal": str(price["unit_amount"])
        if price.get("unit_amount") is not None
        else line.get("unit_amount_excluding_tax"),
    }
    out["parent"] = {
        "invoice_item_details": {
            "invoice_item": line.get("invoice_item"),
            "proration": bool(line.get("proration")),
            "proration_details": line.get("proration_details") or {"credited_items": None},
            "subscription": line.get("subscription"),
        },
        "subscription_item_details": None,
        "type": "invoice_item_details",
    }
    out["quantity_decimal"] = str(line["quantity"]) if line.get("quantity") is not None else None
    return _keep_sdk_fields(out)


def invoice_payment(invoice: dict[str, Any]) -> dict[str, Any] | None:
    """The InvoicePayment of a paid invoice (Stripe surfaces the payment intent when there is one)."""
    pi, charge = invoice.get("payment_intent"), invoice.get("charge")
    if not pi and not charge:
        return None
    pi = pi["id"] if isinstance(pi, dict) else pi
    charge = charge["id"] if isinstance(charge, dict) else charge
    digest = hashlib.blake2b(invoice["id"].encode(), digest_size=12).hexdigest()
    paid_at = (invoice.get("status_transitions") or {}).get("paid_at")
    return {
        "id": f"inpay_{digest}",
        "object": "invoice_payment",
        "amount_paid": invoice.get("amount_paid") if invoice.get("status") == "paid" else None,
        "amount_requested": invoice.get("amount_due", 0),
        "created": invoice.get("created", 0),
        "currency": invoice.get("currency"),
        "invoice": invoice["id"],
        "is_default": True,
        "livemode": bool(invoice.get("livemode")),
        "payment": ({"payment_intent": pi, "type": "payment_intent"} if pi else {"charge": charge, "type": "charge"}),
        "status": "paid" if invoice.get("status") == "paid" else "open",
        "status_transitions": {"canceled_at": None, "paid_at": paid_at},
    }


def invoice_payments(invoice: dict[str, Any]) -> dict[str, Any]:
    """The includable `invoice.payments` list."""
    payment = invoice_payment(invoice)
    return {
        "object": "list",
        "data": [payment] if payment else [],
        "has_more": False,
        "url": f"/v1/invoices/{invoice['id']}/payments",
    }


def current_rendering(coll: str, out: dict[str, Any], *, include: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The current-version rendering of an object rendered in 2023 shapes (`out` is a fresh dict).

    `include` names includable fields that were expanded (e.g. the invoice's `payments`), which are
    computed from the 2023 fields before those are dropped."""
    if coll == "invoices":
        if "payments" in include:
            out["payments"] = invoice_payments(out)
        out["total_taxes"] = [_tax(t) for t in out.get("total_tax_amounts") or []]
        out["issuer"] = {"type": "self"}
        out["amount_overpaid"] = 0
        out["amount_paid_off_stripe"] = None
        out["parent"] = None
        out["total_pretax_credit_amounts"] = [
            {
                "amount": d["amount"],
                "credit_balance_transaction": None,
                "discount": d.get("discount"),
                "type": "discount",
            }
            for d in out.get("total_discount_amounts") or []
        ]
        out["confirmation_secret"] = None
        out["customer_account"] = None
        out["status_details"] = None
        out["threshold_reason"] = None
        out["automatically_finalizes_at"] = None
        out["rendering"] = None
        lines = out.get("lines")
        if isinstance(lines, dict) and isinstance(lines.get("data"), list):
            out["lines"] = {**lines, "data": [_line(li, out["id"]) for li in lines["data"]]}
    elif coll == "charges":
        out.setdefault("presentment_details", None)
    elif coll == "balance_transactions":
        out["balance_type"] = "payments"
    elif coll == "refunds":
        out.setdefault("presentment_details", None)
        out.setdefault("destination_details", None)
    out = _keep_sdk_fields(out)
    for name in INCLUDABLE.get(out.get("object", ""), ()):
        if name not in include:
            out.pop(name, None)
    return out


def expandable(object_name: str, allowed: frozenset[str], version: str | None) -> frozenset[str]:
    """The fields `expand[]` may name on an object at `version`."""
    if not is_current(version):
        return allowed
    return (allowed - EXPAND_REMOVED.get(object_name, frozenset())) | EXPAND_ADDED.get(object_name, frozenset())
