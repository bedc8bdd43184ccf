"""Stripe object shapes: per-type templates, id minting, and the id-prefix -> collection map.

Objects are stored sparse (only the fields that vary per object) and rendered as
`template | stored`, so 200k charges do not each carry forty copies of `"application": null`.
Nested values are never mutated in place (an update replaces the top-level field), so the shared
template dicts and event snapshots stay correct.
"""

from __future__ import annotations

import hashlib
from typing import Any

API_VERSION = "2023-08-16"
DAY = 86_400

# Collection name -> (`object` value, list url). Order is the order of `state.summary()["counts"]`.
COLLECTIONS: dict[str, tuple[str, str]] = {
    "customers": ("customer", "/v1/customers"),
    "charges": ("charge", "/v1/charges"),
    "refunds": ("refund", "/v1/refunds"),
    "balance_transactions": ("balance_transaction", "/v1/balance_transactions"),
    "payouts": ("payout", "/v1/payouts"),
    "disputes": ("dispute", "/v1/disputes"),
    "events": ("event", "/v1/events"),
    "invoices": ("invoice", "/v1/invoices"),
    "payment_intents": ("payment_intent", "/v1/payment_intents"),
}

# Id prefixes Stripe uses for each resource (py_/pyr_/du_ appear for non-card payments and disputes).
PREFIX_TO_COLLECTION: dict[str, str] = {
    "cus": "customers",
    "ch": "charges",
    "py": "charges",
    "re": "refunds",
    "pyr": "refunds",
    "txn": "balance_transactions",
    "po": "payouts",
    "dp": "disputes",
    "du": "disputes",
    "evt": "events",
    "in": "invoices",
    "pi": "payment_intents",
}

# Fields `expand[]` may name, per object (enums.json `expansion_fields`, plus charge.refunds which
# stopped being included by default in API 2022-11-15 and is only returned when expanded).
EXPANDABLE: dict[str, frozenset[str]] = {
    "charge": frozenset(
        {
            "application",
            "application_fee",
            "balance_transaction",
            "customer",
            "failure_balance_transaction",
            "invoice",
            "on_behalf_of",
            "payment_intent",
            "review",
            "source_transfer",
            "transfer",
            "refunds",
        }
    ),
    "refund": frozenset(
        {
            "balance_transaction",
            "charge",
            "failure_balance_transaction",
            "payment_intent",
            "source_transfer_reversal",
            "transfer_reversal",
        }
    ),
    "balance_transaction": frozenset({"source"}),
    "payout": frozenset(
        {"balance_transaction", "destination", "failure_balance_transaction", "original_payout", "reversed_by"}
    ),
    "customer": frozenset({"default_source", "test_clock"}),
    "dispute": frozenset({"charge", "payment_intent"}),
    "payment_intent": frozenset(
        {"application", "customer", "invoice", "latest_charge", "on_behalf_of", "payment_method", "review"}
    ),
    "invoice": frozenset(
        {
            "application",
            "charge",
            "customer",
            "default_payment_method",
            "default_source",
            "latest_revision",
            "on_behalf_of",
            "payment_intent",
            "quote",
            "subscription",
            "test_clock",
        }
    ),
    "event": frozenset(),
}

_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# bytes.translate maps each digest byte to an alphanumeric in one C call: ids are on the hot path
# of generating hundreds of thousands of objects. The slight bias of `% 62` does not matter here.
_TRANSLATE = bytes(_ALPHABET[i % 62] for i in range(256))


class IdFactory:
    """Mints Stripe-looking ids (`ch_` + 24 alphanumerics) that are stable for a namespace.

    The first 6 characters count *down* in base 62, so among objects created in the same second
    (the list order's tie-break is the id) the newer one sorts first, as on Stripe."""

    _SPAN = 62**6

    def __init__(self, namespace: str) -> None:
        self._ns = namespace.encode()
        self._n = 0
        seed = int.from_bytes(hashlib.blake2b(self._ns, digest_size=8).digest(), "big")
        self._top = self._SPAN // 2 + seed % (self._SPAN // 2)

    def new(self, prefix: str) -> str:
        """Next id with the given prefix; unique within the namespace."""
        self._n += 1
        seq = self._top - self._n
        head = bytearray(6)
        for i in range(5, -1, -1):
            seq, digit = divmod(seq, 62)
            head[i] = _ALPHABET[digit]
        digest = hashlib.blake2b(b"%s:%d" % (self._ns, self._n), digest_size=18).digest()
        return f"{prefix}_{head.decode()}{digest.translate(_TRANSLATE).decode()}"


def collection_for_id(object_id: str) -> str | None:
    """The collection an id belongs to, from its prefix (None for ids the emulator does not store)."""
    prefix, sep, _rest = object_id.partition("_")
    return PREFIX_TO_COLLECTION.get(prefix) if sep else None


EMPTY_ADDRESS = {"city": None, "country": None, "line1": None, "line2": None, "postal_code": None, "state": None}
EMPTY_BILLING = {"address": EMPTY_ADDRESS, "email": None, "name": None, "phone": None}
EMPTY_EVIDENCE = {
    key: None
    for key in (
        "access_activity_log",
        "billing_address",
        "cancellation_policy",
        "cancellation_policy_disclosure",
        "cancellation_rebuttal",
        "customer_communication",
        "customer_email_address",
        "customer_name",
        "customer_purchase_ip",
        "customer_signature",
        "duplicate_charge_documentation",
        "duplicate_charge_explanation",
        "duplicate_charge_id",
        "product_description",
        "receipt",
        "refund_policy",
        "refund_policy_disclosure",
        "refund_refusal_explanation",
        "service_date",
        "service_documentation",
        "shipping_address",
        "shipping_carrier",
        "shipping_date",
        "shipping_documentation",
        "shipping_tracking_number",
        "uncategorized_file",
        "uncategorized_text",
    )
}

# A handful of shared card variants: charges reference one of them instead of each owning a copy.
_CARDS = [
    ("visa", "4242", "US", "credit"),
    ("visa", "1881", "US", "debit"),
    ("mastercard", "4444", "US", "credit"),
    ("mastercard", "8210", "GB", "debit"),
    ("amex", "8431", "US", "credit"),
    ("visa", "3220", "DE", "credit"),
    ("jcb", "0000", "JP", "credit"),
    ("visa", "0077", "KW", "credit"),
]


def _card_details(brand: str, last4: str, country: str, funding: str, i: int) -> dict[str, Any]:
    return {
        "card": {
            "brand": brand,
            "checks": {"address_line1_check": None, "address_postal_code_check": "pass", "cvc_check": "pass"},
            "country": country,
            "exp_month": 1 + (i * 5) % 12,
            "exp_year": 2028 + i % 4,
            "fingerprint": hashlib.sha1(f"{brand}{last4}".encode()).hexdigest()[:16],
            "funding": funding,
            "installments": None,
            "last4": last4,
            "mandate": None,
            "network": brand if brand != "jcb" else "jcb",
            "network_token": {"used": False},
            "three_d_secure": None,
            "wallet": None,
        },
        "type": "card",
    }


CARD_DETAILS = [_card_details(*c, i) for i, c in enumerate(_CARDS)]
DISPUTE_CARD_DETAILS = {
    brand: {"card": {"brand": brand, "network_reason_code": "10.4"}, "type": "card"} for brand, *_ in _CARDS
}
OUTCOMES = [
    {
        "network_status": "approved_by_network",
        "reason": None,
        "risk_level": level,
        "risk_score": score,
        "seller_message": "Payment complete.",
        "type": "authorized",
    }
    for level, score in (("normal", 12), ("normal", 27), ("normal", 41), ("elevated", 66))
]

TEMPLATES: dict[str, dict[str, Any]] = {
    "customers": {
        "id": None,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": 0,
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": None,
        "invoice_prefix": None,
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {},
        "name": None,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    },
    "charges": {
        "id": None,
        "object": "charge",
        "amount": 0,
        "amount_captured": 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": None,
        "billing_details": EMPTY_BILLING,
        "calculated_statement_descriptor": "EMULATOR SHOP",
        "captured": True,
        "created": 0,
        "currency": "usd",
        "customer": None,
        "description": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "fraud_details": {},
        "invoice": None,
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "outcome": OUTCOMES[0],
        "paid": True,
        "payment_intent": None,
        "payment_method": None,
        "payment_method_details": CARD_DETAILS[0],
        "radar_options": {},
        "receipt_email": None,
        "receipt_number": None,
        "receipt_url": None,
        "refunded": False,
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded",
        "transfer_data": None,
        "transfer_group": None,
    },
    "refunds": {
        "id": None,
        "object": "refund",
        "amount": 0,
        "balance_transaction": None,
        "charge": None,
        "created": 0,
        "currency": "usd",
        "metadata": {},
        "payment_intent": None,
        "reason": None,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    },
    "balance_transactions": {
        "id": None,
        "object": "balance_transaction",
        "amount": 0,
        "available_on": 0,
        "created": 0,
        "currency": "usd",
        "description": None,
        "exchange_rate": None,
        "fee": 0,
        "fee_details": None,  # derived at render time unless stored: see derive_fields
        "net": 0,
        "reporting_category": "charge",
        "source": None,
        "status": "available",
        "type": "charge",
    },
    "payouts": {
        "id": None,
        "object": "payout",
        "amount": 0,
        "arrival_date": 0,
        "automatic": True,
        "balance_transaction": None,
        "created": 0,
        "currency": "usd",
        "description": "STRIPE PAYOUT",
        "destination": None,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "livemode": False,
        "metadata": {},
        "method": "standard",
        "original_payout": None,
        "reconciliation_status": "completed",
        "reversed_by": None,
        "source_type": "card",
        "statement_descriptor": None,
        "status": "in_transit",
        "type": "bank_account",
    },
    "disputes": {
        "id": None,
        "object": "dispute",
        "amount": 0,
        "balance_transactions": [],
        "charge": None,
        "created": 0,
        "currency": "usd",
        "evidence": EMPTY_EVIDENCE,
        "evidence_details": {"due_by": None, "has_evidence": False, "past_due": False, "submission_count": 0},
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": None,
        "payment_method_details": DISPUTE_CARD_DETAILS["visa"],
        "reason": "general",
        "status": "needs_response",
    },
    "payment_intents": {
        "id": None,
        "object": "payment_intent",
        "amount": 0,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": None,
        "confirmation_method": "automatic",
        "created": 0,
        "currency": "usd",
        "customer": None,
        "description": None,
        "invoice": None,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": {},
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded",
        "transfer_data": None,
        "transfer_group": None,
    },
    "invoices": {
        "id": None,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Emulator Shop",
        "account_tax_ids": None,
        "amount_due": 0,
        "amount_paid": 0,
        "amount_remaining": 0,
        "amount_shipping": 0,
        "application": None,
        "application_fee_amount": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": False,
        "automatic_tax": {"enabled": False, "status": None},
        "billing_reason": "manual",
        "charge": None,
        "collection_method": "charge_automatically",
        "created": 0,
        "currency": "usd",
        "custom_fields": None,
        "customer": None,
        "customer_address": None,
        "customer_email": None,
        "customer_name": None,
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discount": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": None,
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "paid": False,
        "paid_out_of_band": False,
        "payment_intent": None,
        "payment_settings": {"default_mandate": None, "payment_method_options": None, "payment_method_types": None},
        "period_end": 0,
        "period_start": 0,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "quote": None,
        "receipt_number": None,
        "rendering_options": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subscription": None,
        "subscription_details": None,
        "subtotal": 0,
        "subtotal_excluding_tax": 0,
        "tax": None,
        "test_clock": None,
        "total": 0,
        "total_discount_amounts": [],
        "total_excluding_tax": 0,
        "total_tax_amounts": [],
        "transfer_data": None,
        "webhooks_delivered_at": None,
    },
}


def derive_fields(collection: str, out: dict[str, Any]) -> None:
    """Fill the fields that are pure functions of the id (urls, secrets) at render time: they would
    otherwise cost a unique string per stored object."""
    oid = out["id"]
    if collection == "balance_transactions":
        if out["fee_details"] is None:
            fee = out["fee"]
            out["fee_details"] = (
                [
                    {
                        "amount": fee,
                        "application": None,
                        "currency": out["currency"],
                        "description": "Stripe processing fees",
                        "type": "stripe_fee",
                    }
                ]
                if fee
                else []
            )
    elif collection == "charges":
        if out.get("receipt_url") is None:
            out["receipt_url"] = f"https://pay.stripe.com/receipts/payment/{oid}"
        if out.get("payment_method") is None:
            out["payment_method"] = "pm_" + oid.partition("_")[2]
    elif collection == "payment_intents":
        if out.get("client_secret") is None:
            out["client_secret"] = f"{oid}_secret_{oid[-12:]}"
    elif collection == "customers":
        if out.get("invoice_prefix") is None:
            out["invoice_prefix"] = oid.partition("_")[2][:8].upper()
    elif collection == "invoices" and out.get("status") != "draft":
        out["hosted_invoice_url"] = f"https://invoice.stripe.com/i/{oid}"
        out["invoice_pdf"] = f"https://pay.stripe.com/invoice/{oid}/pdf"
