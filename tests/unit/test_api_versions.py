"""One explicit Stripe API version: the setting, the includes it needs, staging both shapes, rendering."""

from __future__ import annotations

from datetime import UTC, datetime

import stripe

from stripe_sage_pipeline.extract.tables import TABLES, has_current_shapes, include_params, to_row
from stripe_sage_pipeline.settings import load_settings
from stripe_sage_sandboxes.stripe_emulator.versions import current_rendering, is_current, old_rendering, sdk_fields

AT = datetime(2026, 7, 13, tzinfo=UTC)
INVOICE_2023 = {
    "id": "in_1",
    "object": "invoice",
    "created": 1783934100,
    "currency": "usd",
    "customer": "cus_1",
    "charge": "ch_1",
    "payment_intent": "pi_1",
    "tax": 825,
    "subtotal": 10000,
    "total": 10825,
    "amount_paid": 10825,
    "amount_due": 10825,
    "status": "paid",
    "status_transitions": {"paid_at": 1783934100},
    "total_tax_amounts": [{"amount": 825, "inclusive": False, "tax_rate": "txr_1", "taxable_amount": 10000}],
    "lines": {
        "object": "list",
        "data": [
            {
                "id": "il_1",
                "object": "line_item",
                "amount": 10000,
                "quantity": 1,
                "tax_amounts": [{"amount": 825, "inclusive": False, "tax_rate": "txr_1"}],
            }
        ],
    },
}


def test_the_default_version_is_the_one_the_sdk_speaks(monkeypatch) -> None:
    monkeypatch.delenv("STRIPE_API_VERSION", raising=False)
    assert load_settings().stripe_api_version == stripe.api_version
    monkeypatch.setenv("STRIPE_API_VERSION", "2023-08-16")
    assert load_settings().stripe_api_version == "2023-08-16"


def test_current_versions_ask_for_the_invoice_payments() -> None:
    assert has_current_shapes(stripe.api_version) and not has_current_shapes("2024-06-20")
    assert include_params("/v1/invoices", stripe.api_version, on_list=True) == {"expand": ["data.payments"]}
    assert include_params("/v1/invoices/in_1", stripe.api_version, on_list=False) == {"expand": ["payments"]}
    assert include_params("/v1/invoices", "2023-08-16", on_list=True) == {}
    assert include_params("/v1/charges", stripe.api_version, on_list=True) == {}


def test_an_invoice_is_staged_with_its_links_and_version_in_either_shape() -> None:
    table = TABLES["invoices"]
    cols = table.column_names
    old = dict(zip(cols, to_row(table, INVOICE_2023, "", AT, "2023-08-16"), strict=True))
    new_shape = current_rendering("invoices", dict(INVOICE_2023), include=frozenset({"payments"}))
    new = dict(zip(cols, to_row(table, new_shape, "", AT, stripe.api_version), strict=True))
    assert (old["charge_id"], old["payment_intent_id"], old["tax"], old["_api_version"]) == (
        "ch_1",
        "pi_1",
        825,
        "2023-08-16",
    )
    # Current shape: no invoice.charge / payment_intent / tax; the link comes from the InvoicePayment.
    assert (new["charge_id"], new["payment_intent_id"], new["tax"], new["_api_version"]) == (
        None,
        "pi_1",
        None,
        stripe.api_version,
    )


def test_current_rendering_follows_the_sdk_classes() -> None:
    out = current_rendering("invoices", dict(INVOICE_2023))
    assert set(out) <= sdk_fields("invoice") and "payments" not in out
    assert not {"charge", "payment_intent", "tax", "total_tax_amounts"} & set(out)
    assert out["total_taxes"] == [
        {
            "amount": 825,
            "tax_behavior": "exclusive",
            "tax_rate_details": {"tax_rate": "txr_1"},
            "taxability_reason": "standard_rated",
            "taxable_amount": 10000,
            "type": "tax_rate_details",
        }
    ]
    [line] = out["lines"]["data"]
    assert line["taxes"][0]["amount"] == 825 and "tax_amounts" not in line and line["subtotal"] == 10000
    charge = {"id": "ch_1", "object": "charge", "invoice": "in_1", "presentment_details": None}
    assert "invoice" not in current_rendering("charges", dict(charge))
    assert "presentment_details" not in old_rendering("charges", dict(charge))
    assert is_current(stripe.api_version) and not is_current(None) and not is_current("2023-08-16")
