"""The Intacct target's pure parts: planned payloads as Intacct bodies, and `ia::error` → dead-letter reasons."""

from __future__ import annotations

import pytest
import yaml

from stripe_sage_pipeline.sage.errors import Conflict, CredentialsError, NotFound, RecordInvalid
from stripe_sage_pipeline.sage.intacct import parse_locations
from stripe_sage_pipeline.sage.intacct import payloads as P
from stripe_sage_pipeline.sage.intacct.errors import classify_detail, sage_details, to_exception
from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_sandboxes.intacct.store import DEFAULT_CHART, HEADER_ACCOUNTS

JE = {
    "journal": "ST",
    "posting_date": "2026-07-14",
    "description": "Stripe charge",
    "reference": "txn_1",
    "currency": "JPY",
    "lines": [
        {"glacnt": "1150", "debit": "964", "credit": "0", "memo": "txn_1"},
        {"glacnt": "6100", "debit": "36", "credit": "0", "memo": ""},
        {"glacnt": "4000", "debit": "0", "credit": "1000", "memo": "txn_1"},
    ],
}


def test_journal_entry_lines_are_typed_positive_amounts_in_the_currency_location() -> None:
    body = P.journal_entry(JE, "txn_1~v2", {"jpy": "JP-TOKYO"})
    assert body["referenceNumber"] == "txn_1~v2" and body["glJournal"] == {"id": "ST"}
    assert body["postingDate"] == "2026-07-14"
    assert [(ln["txnType"], ln["txnAmount"], ln["glAccount"]["id"]) for ln in body["lines"]] == [
        ("debit", "964", "1150"),
        ("debit", "36", "6100"),
        ("credit", "1000", "4000"),
    ]
    assert {ln["dimensions"]["location"]["id"] for ln in body["lines"]} == {"JP-TOKYO"}
    assert "description" not in body["lines"][1]  # an empty memo is left out
    assert P.journal_entry({**JE, "currency": "USD"}, "x")["lines"][0]["dimensions"]["location"]["id"] == "USD"


def test_a_reversal_mirrors_every_line_at_the_given_date() -> None:
    posted = P.journal_entry(JE, "txn_1")
    mirror = P.reversal(posted, "txn_1~r1", "2026-07-14", "Reversal of txn_1")
    assert [ln["txnType"] for ln in mirror["lines"]] == ["credit", "credit", "debit"]
    assert [ln["txnAmount"] for ln in mirror["lines"]] == ["964", "36", "1000"]
    assert (mirror["referenceNumber"], mirror["postingDate"]) == ("txn_1~r1", "2026-07-14")


def test_invoice_books_revenue_and_tax_lines() -> None:
    inv = {
        "custno": "ACME-1",
        "invdate": "2026-07-14",
        "currency": "USD",
        "description": "Stripe charge ch_1",
        "lines": [
            {
                "description": "Widget",
                "quantity": "2",
                "unit_price": "50.00",
                "revenue_glacnt": "4000",
                "tax_amount": "8.00",
                "tax_glacnt": "2200",
            },
            {"description": "Setup", "quantity": "1", "unit_price": "10.00", "revenue_glacnt": "4000"},
        ],
    }
    body = P.invoice(inv, "ch_1")
    assert (body["invoiceNumber"], body["customer"], body["currency"]) == (
        "ch_1",
        {"id": "ACME-1"},
        {"txnCurrency": "USD"},
    )
    assert [(ln["glAccount"]["id"], ln["txnAmount"]) for ln in body["lines"]] == [
        ("4000", "100.00"),
        ("2200", "8.00"),
        ("4000", "10.00"),
    ]


def test_payment_and_fee_entry_of_a_cash_receipt() -> None:
    receipt = {
        "custno": "ACME-1",
        "receipt_date": "2026-07-14",
        "amount": "108.00",
        "fee_amount": "3.43",
        "currency": "USD",
        "deposit_glacnt": "1150",
        "fee_glacnt": "6100",
        "reference": "ch_3NabcdefghijklmnopQRST",
        "description": "Stripe charge",
        "applications": [{"invno": "105", "amount": "108.00"}],
    }
    pay = P.payment(receipt, "txn_1")
    assert pay["documentNumber"] == "txn_1" and len(pay["referenceNumber"]) == P.PAYMENT_REFERENCE_MAX
    assert pay["undepositedGLAccount"] == {"id": "1150"} and pay["paymentSummary"] == {"receiptDate": "2026-07-14"}
    assert pay["paymentDetails"] == [{"arInvoice": {"key": "105"}, "txnCurrency": {"paymentAmount": "108.00"}}]
    fee = P.fee_entry(receipt, "txn_1~fee")
    assert [(ln["txnType"], ln["glAccount"]["id"], ln["txnAmount"]) for ln in fee["lines"]] == [
        ("debit", "6100", "3.43"),
        ("credit", "1150", "3.43"),
    ]
    assert P.fee_entry({**receipt, "fee_amount": "0.00"}, "txn_1~fee") is None


def test_customer_round_trip_keeps_the_stripe_id() -> None:
    src = {
        "custno": "ACME-1",
        "company": "Acme",
        "email": "ap@acme.example",
        "phone": "+1 555",
        "address1": "1 Main",
        "city": "Springfield",
        "zip": "62701",
        "country": "US",
        "currency": "USD",
    }
    body = P.customer(src, "cus_1")
    assert (body["id"], body["name"], body["notes"]) == ("ACME-1", "Acme", "stripe:cus_1")
    assert body["contacts"]["default"]["mailingAddress"]["postCode"] == "62701"
    back = P.customer_record(body)
    assert back["external_ref"] == "cus_1"
    assert {k: back[k] for k in src} == src
    assert P.customer({"email": "x@y.z"}) == {"contacts": {"default": {"email1": "x@y.z"}}}


@pytest.mark.parametrize(
    ("error_id", "target", "message", "reason"),
    [
        ("GL-PERIOD-CLOSED", "/postingDate", "", "PeriodClosed"),
        ("BL01001973", "/postingDate", "Cannot post to a closed period 06/2026", "PeriodClosed"),
        ("BL01001973", None, "The period is not open for posting", "PeriodClosed"),
        ("GL-ACCOUNT-INVALID", "/lines/0/glAccount/id", "", "AccountNotFound"),
        ("X1", "/lines/0/glAccount/id", "Invalid GL account 1999", "AccountNotFound"),
        ("X2", "/lines/0/glAccount/id", "Account 7900 is inactive", "AccountInactive"),
        ("X3", "/lines", "Debits and credits do not balance", "Unbalanced"),
        ("X4", "/customer/id", "Customer NOPE-1 does not exist", "CustomerNotFound"),
        ("X5", "/paymentDetails/0", "Payment amount exceeds the amount due", "OverApplied"),
        ("X6", "/invoiceNumber", "Invoice number ch_1 already exists", "RecordDuplicate"),
        ("X7", "/name", "name is required", "ValidationFailed"),
    ],
)
def test_classify_detail(error_id, target, message, reason) -> None:
    assert classify_detail(error_id, target, message) == reason


def _err(error_id: str, target: str, message: str) -> dict:
    return {
        "ia::result": {
            "ia::error": {
                "code": "invalidRequest",
                "message": "Could not create record",
                "errorId": "REST-1064",
                "details": [{"code": "invalidRequest", "errorId": error_id, "target": target, "message": message}],
            }
        },
        "ia::meta": {"totalCount": 1, "totalSuccess": 0, "totalError": 1},
    }


def test_to_exception_by_status_and_kind() -> None:
    closed = to_exception(400, _err("GL-PERIOD-CLOSED", "/postingDate", "closed"))
    assert isinstance(closed, RecordInvalid)
    assert closed.details == [
        {"field": "postingDate", "code": "PeriodClosed", "message": "closed", "errorId": "GL-PERIOD-CLOSED"}
    ]
    assert isinstance(to_exception(400, _err("AR-INVOICE-DUPLICATE", "/invoiceNumber", "used")), Conflict)
    assert isinstance(to_exception(401, {}), CredentialsError)
    assert isinstance(to_exception(404, _err("REST-1015", "", "not found")), NotFound)
    bare = {
        "ia::result": {
            "ia::error": {
                "code": "invalidRequest",
                "message": "A POST request requires a payload",
                "errorId": "REST-1028",
            }
        }
    }
    assert sage_details(bare["ia::result"]["ia::error"])[0]["code"] == "ValidationFailed"


def test_locations_setting() -> None:
    assert parse_locations("usd=US-01, EUR = EU-01,") == {"usd": "US-01", "eur": "EU-01"}
    assert parse_locations(None) == {}
    with pytest.raises(ValueError, match="'usd' is not currency=location"):
        parse_locations("usd")


def test_the_emulator_chart_holds_every_account_of_the_default_mapping() -> None:
    """The generated history books adjustments to 6900 (and other categories to 1170, 2300, …): an emulator chart
    without them dead-letters those entries AccountNotFound, so the history would not tie through Intacct."""
    mapping = yaml.safe_load((PROJECT_ROOT / "mapping.yaml").read_text())
    postable = {code for code, _name, _kind in DEFAULT_CHART} - HEADER_ACCOUNTS
    assert set(mapping["chart_of_accounts"]) <= postable
