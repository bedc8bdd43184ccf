"""Mapping studio rules without servers: classification and legs, inventory, preview, YAML round trip,
validation messages, and the access rules (token off loopback, CSRF) on the ASGI app."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import yaml

from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_pipeline.studio import rules
from stripe_sage_pipeline.studio.app import CSRF_COOKIE, StudioConfig, create_app, host_name, validate_draft
from stripe_sage_pipeline.studio.audit import flat_changes
from stripe_sage_pipeline.studio.server import BindRefused, check_bind
from stripe_sage_pipeline.studio.yamlfile import apply_draft, load_document, plain, unified_diff
from stripe_sage_pipeline.transform.mapping import parse_mapping

# Starlette's TestClient prefers `httpx2`; the project uses httpx.
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

TEXT = (PROJECT_ROOT / "mapping.yaml").read_text()
BASE = yaml.safe_load(TEXT)
CHART = {
    code: {"glacnt": code, "description": name, "active": True, "postable": True}
    for code, name in BASE["chart_of_accounts"].items()
}
JULY = datetime(2026, 7, 10, 12, tzinfo=UTC)


def mapping(**changes):
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return parse_mapping(data)


def bt(id_, amount, fee, category, type_=None, currency="usd", fee_details=None, payout="po_1", **extra):
    d = {
        "stripe_account": "",
        "balance_transaction_id": id_,
        "amount": amount,
        "fee": fee,
        "net": amount - fee,
        "currency": currency,
        "reporting_category": category,
        "balance_transaction_type": type_ or category,
        "fee_details": fee_details
        if fee_details is not None
        else ([{"amount": fee, "type": "stripe_fee"}] if fee else []),
        "payout_id": payout,
        "created_at": JULY,
        "available_at": JULY,
        "charge_id": None,
    }
    d.update(extra)
    return d


# -- classification and legs -------------------------------------------------------------------


def test_category_follows_reporting_category_then_type_fallback_then_suspense():
    m = mapping()
    assert rules.accounting_category(m, "refund", "refund") == ("refund", "reporting_category")
    assert rules.accounting_category(m, "", "stripe_fee") == ("fee", "type_fallback")
    assert rules.accounting_category(m, "other_adjustment", "adjustment") == ("other_adjustment", "reporting_category")
    assert rules.accounting_category(m, "category_added_later", "type_added_later") == (
        "category_added_later",
        "unmapped",
    )
    assert rules.accounting_category(m, "payout", "payout") == ("payout", "reporting_category")


def test_legs_of_a_dispute_balance_and_follow_the_fee_override():
    m = mapping()
    category, unmapped, legs = rules.transaction_legs(m, bt("txn_d", -5000, 1500, "dispute", "adjustment"))
    assert (category, unmapped) == ("dispute", False)
    # Dr Chargebacks 50.00, Dr Dispute Fees 15.00 (fees.by_category wins), Cr Clearing 65.00
    assert legs == {"4060": 5000, "6110": 1500, "1150": -6500}
    assert sum(legs.values()) == 0


def test_unmapped_dispute_lands_in_suspense():
    data = copy.deepcopy(BASE)
    del data["categories"]["dispute"]
    del data["type_fallback"]["adjustment"]  # else an adjustment falls back to other_adjustment
    m = parse_mapping(data)
    _, unmapped, legs = rules.transaction_legs(m, bt("txn_d", -5000, 1500, "dispute", "adjustment"))
    assert unmapped and legs == {"9999": 5000, "6110": 1500, "1150": -6500}


def test_fee_details_split_by_type_and_the_rest_to_the_default():
    m = mapping(fees={"by_fee_type": {"stripe_fee": "6100", "tax": "2200"}})
    row = bt(
        "txn_c",
        10000,
        400,
        "charge",
        fee_details=[{"amount": 300, "type": "stripe_fee"}, {"amount": 60, "type": "tax"}],
    )
    _, _, legs = rules.transaction_legs(m, row)
    assert legs == {"1150": 9600, "4000": -10000, "6100": 340, "2200": 60}


def test_tax_from_metadata_converted_half_away_from_zero():
    m = mapping()
    row = bt(
        "txn_c",
        11000,
        0,
        "charge",
        currency="usd",
        charge_id="ch_1",
        invoice_id=None,
        charge_metadata={"tax_amount": "805"},
        presentment_currency="eur",
        exchange_rate=Decimal("1.1"),
    )
    _, _, legs = rules.transaction_legs(m, row)
    # 805 EUR cents × 1.1 = 885.5 → 886 USD cents
    assert legs == {"1150": 11000, "4000": -(11000 - 886), "2200": -886}
    assert rules.tax_amount(mapping(tax={"source": "none"}), "charge", row) == 0
    assert rules.tax_amount(m, "charge", {**row, "charge_metadata": {"tax_amount": "8.05"}}) == 0


def _share(amount: int, tax: int, gross: int) -> int:
    """amount x tax / gross, rounded half away from zero (accounting.md), computed independently."""
    q = Decimal(amount) * tax / gross
    return int(q.copy_abs().quantize(Decimal(1), rounding=ROUND_HALF_UP)) * (1 if q >= 0 else -1)


def _refund_of(
    charge_tax: str,
    charge_amount: int,
    amount: int,
    category="refund",
    currency="usd",
    charge_currency="usd",
    fee=0,
    **extra,
):
    return bt(
        f"txn_{category}",
        amount,
        fee,
        category,
        "adjustment" if category.startswith("dispute") else None,
        currency=currency,
        related_charge_id="ch_t",
        charge_amount=charge_amount,
        charge_currency=charge_currency,
        invoice_id=None,
        charge_metadata={"tax_amount": charge_tax},
        **extra,
    )


def test_refunds_and_disputes_reverse_the_charge_tax_pro_rata():
    m = mapping()
    gross, tax = 10825, 825  # a 108.25 charge with 8.25 tax
    # A full refund in the charge's currency gives back exactly the tax posted.
    assert rules.transaction_legs(m, _refund_of(str(tax), gross, -gross))[2] == {
        "4050": gross - tax,
        "2200": tax,
        "1150": -gross,
    }
    # A partial refund: 50.00 x 8.25 / 108.25 = 3.8106... -> 3.81, half away from zero.
    part = _share(-5000, tax, gross)
    assert part == -381
    assert rules.transaction_legs(m, _refund_of(str(tax), gross, -5000))[2] == {
        "4050": 5000 + part,
        "2200": -part,
        "1150": -5000,
    }
    # An exact half rounds away from zero: 1 x 1 / 2 = 0.5 -> 1 (and -0.5 -> -1).
    assert rules.tax_amount(m, "refund", _refund_of("1", 2, 1)) == 1
    assert rules.tax_amount(m, "refund", _refund_of("1", 2, -1)) == -1
    # A lost dispute (fee stays a fee), its reversal (won) puts the tax back.
    dispute = _refund_of(str(tax), gross, -gross, "dispute", fee=1500)
    assert rules.transaction_legs(m, dispute)[2] == {
        "4060": gross - tax,
        "2200": tax,
        "6110": 1500,
        "1150": -gross - 1500,
    }
    won = _refund_of(str(tax), gross, gross, "dispute_reversal")
    assert rules.transaction_legs(m, won)[2] == {"4060": -(gross - tax), "2200": -tax, "1150": gross}
    # A refund settled in USD of a charge presented in EUR: the ratio of the EUR figures, applied to USD.
    fx = _refund_of("1900", 11900, -13090, charge_currency="eur")
    assert rules.tax_amount(m, "refund", fx) == _share(-13090, 1900, 11900) == -2090
    # The invoice's tax wins over the metadata under invoice_then_metadata.
    inv = {**_refund_of("999", gross, -gross), "invoice_id": "in_1", "invoice_tax": tax}
    assert rules.tax_amount(m, "refund", inv) == -tax
    # Switched off: the whole refund is contra-revenue, the tax stays owed; nor for unrelated categories.
    off = mapping(tax={"reverse_on_refunds": False})
    assert rules.transaction_legs(off, _refund_of(str(tax), gross, -gross))[2] == {"4050": gross, "1150": -gross}
    assert rules.tax_amount(m, "other_adjustment", _refund_of(str(tax), gross, -gross, "other_adjustment")) == 0
    # No charge found (or an untaxed one): nothing to reverse.
    assert rules.tax_amount(m, "refund", {**_refund_of(str(tax), gross, -5000), "related_charge_id": None}) == 0
    assert rules.tax_amount(m, "refund", _refund_of("", gross, -5000)) == 0


def test_payout_movements_have_no_transaction_legs():
    assert rules.transaction_legs(mapping(), bt("txn_p", -9000, 0, "payout"))[2] == {}
    assert rules.payout_bank_legs(mapping(), "usd", 9000) == {"1010": 9000, "1150": -9000}
    assert rules.payout_bank_legs(mapping(), "usd", 9000, -1) == {"1010": -9000, "1150": 9000}


def test_posting_date_uses_activity_date_in_the_mapping_zone():
    row = bt(
        "txn_c",
        100,
        0,
        "charge",
        created_at=datetime(2026, 7, 1, 2, tzinfo=UTC),
        available_at=datetime(2026, 7, 3, 2, tzinfo=UTC),
    )
    assert rules.posting_date(mapping(), row) == date(2026, 7, 1)
    assert rules.posting_date(mapping(posting_date={"timezone": "America/New_York"}), row) == date(2026, 6, 30)
    assert rules.posting_date(mapping(posting_date={"activity_date": "available_on"}), row) == date(2026, 7, 3)


# -- preview ---------------------------------------------------------------------------------------


def _month(m, txns, payout_amount):
    """Mart lines for a summary entry of po_1 as dbt would build them under `m`."""
    legs: dict[str, int] = {}
    for t in txns:
        for a, v in rules.transaction_legs(m, t)[2].items():
            legs[a] = legs.get(a, 0) + v
    for a, v in rules.payout_bank_legs(m, "usd", payout_amount).items():
        legs[a] = legs.get(a, 0) + v
    lines = [
        {
            "entry_id": "summary:po_1",
            "posting_mode": "payout_summary",
            "entry_type": "payout_summary",
            "external_ref": "po_1",
            "posting_date": date(2026, 7, 12),
            "account_code": a,
            "debit": max(v, 0),
            "credit": max(-v, 0),
            "currency": "usd",
            "is_unmapped": a == "9999",
            "stripe_account": "",
            "payout_id": "po_1",
            "balance_transaction_id": None,
        }
        for a, v in legs.items()
        if v
    ]
    return rules.MonthData(
        date(2026, 7, 1),
        date(2026, 7, 31),
        txns,
        {("", "po_1"): {"amount": payout_amount, "currency": "usd"}},
        lines,
        {"po_1": "posted"},
    )


def test_preview_moves_exactly_the_suspense_amount_and_names_the_entry_to_reverse():
    data_ = copy.deepcopy(BASE)
    del data_["categories"]["dispute"]
    del data_["type_fallback"]["adjustment"]  # else an adjustment falls back to other_adjustment
    today = parse_mapping(data_)
    txns = [bt("txn_c", 20000, 610, "charge"), bt("txn_d", -5000, 1500, "dispute", "adjustment")]
    month = _month(today, txns, 20000 - 610 - 5000 - 1500)
    draft = mapping()  # dispute -> 4060
    p = rules.preview(today, draft, month)
    assert p.model_gap == {}
    diff = {(r.currency, r.account): r.difference for r in p.rows if r.difference}
    assert diff == {("usd", "9999"): -5000, ("usd", "4060"): 5000}
    assert [(c.external_ref, c.action) for c in p.changes] == [("po_1", "reverse_and_repost")]
    assert (p.unmapped_current, p.unmapped_draft) == (1, 0)
    # The same mapping previews no change at all.
    same = rules.preview(today, today, month)
    assert not same.changed_rows and not same.changes


def test_preview_reports_when_the_rules_and_the_marts_disagree():
    m = mapping()
    month = _month(m, [bt("txn_c", 20000, 610, "charge")], 19390)
    month.mart_lines[0]["debit"] += 1  # a mart the rules cannot reproduce
    assert rules.preview(m, m, month).model_gap


def test_inventory_lists_suspense_first_with_its_amount():
    data_ = copy.deepcopy(BASE)
    del data_["categories"]["dispute"]
    del data_["type_fallback"]["adjustment"]  # else an adjustment falls back to other_adjustment
    m = parse_mapping(data_)
    groups = [
        {
            "reporting_category": "charge",
            "balance_transaction_type": "charge",
            "currency": "usd",
            "n": 10,
            "amount": 50000,
        },
        {
            "reporting_category": "dispute",
            "balance_transaction_type": "adjustment",
            "currency": "usd",
            "n": 2,
            "amount": -6550,
        },
        {
            "reporting_category": "refund",
            "balance_transaction_type": "refund",
            "currency": "usd",
            "n": 1,
            "amount": -1000,
        },
    ]
    fees = [{"fee_type": "stripe_fee", "accounting_category": "charge", "currency": "usd", "n": 10, "amount": 1500}]
    inv = rules.inventory(m, groups, fees)
    first = inv[0]
    assert (first.kind, first.value, first.amount, first.account, first.suspense) == (
        "reporting_category",
        "dispute",
        -6550,
        "9999",
        True,
    )
    kinds = {(r.kind, r.value): r.account for r in inv}
    assert kinds[("reporting_category", "refund")] == "4050"
    assert kinds[("balance_transaction_type", "adjustment")] == "9999"
    assert kinds[("fee_type", "stripe_fee (charge)")] == "6100"
    assert kinds[("currency", "usd")] == "1150 / 1010"


# -- YAML round trip --------------------------------------------------------------------------------


def test_round_trip_without_changes_is_byte_identical():
    assert apply_draft(TEXT, plain(load_document(TEXT))) == TEXT


def test_save_keeps_comments_and_order_and_places_new_keys_in_their_section():
    draft = plain(load_document(TEXT))
    draft["categories"]["category_added_later"] = "9999"
    draft["categories"]["dispute"] = "4050"
    del draft["fees"]["by_fee_type"]["tax"]
    draft["conditional_fields"].append({"sage_field": "ponum2", "when_present": "metadata.po"})
    new = apply_draft(TEXT, draft)
    old_comments = [ln.strip() for ln in TEXT.splitlines() if ln.strip().startswith("#")]
    assert [ln.strip() for ln in new.splitlines() if ln.strip().startswith("#")] == old_comments
    assert '  dispute: "4050"' in new and '  category_added_later: "9999"\n\n# When a balance' in new
    assert 'tax: "6100"' not in new.split("by_fee_type:")[1].split("value_maps")[0]
    assert parse_mapping(yaml.safe_load(new)).categories["category_added_later"] == "9999"
    assert [k for k in yaml.safe_load(new)] == [k for k in BASE]
    diff = unified_diff(TEXT, new)
    assert '-  dispute: "4060"' in diff and '+  dispute: "4050"' in diff


def test_flat_changes_lists_each_changed_leaf():
    old = {"categories": {"dispute": "4060", "fee": "6100"}, "posting_mode": "detail"}
    new = {"categories": {"dispute": "4050", "tax": "2200", "fee": "6100"}, "posting_mode": "detail"}
    assert flat_changes(old, new) == [
        {"key": "categories.dispute", "old": "4060", "new": "4050"},
        {"key": "categories.tax", "old": None, "new": "2200"},
    ]


# -- validation messages ----------------------------------------------------------------------------


def test_validation_names_key_value_and_message():
    draft = copy.deepcopy(BASE)
    draft["categories"]["dispute"] = "4999"
    draft["categories"]["Made Up"] = "4000"
    draft["posting_mode"] = "weekly"
    m, problems = validate_draft(draft, CHART)
    assert m is None
    assert {
        "key": "posting_mode",
        "value": "weekly",
        "message": "Input should be 'detail' or 'payout_summary'",
    } in problems
    draft["posting_mode"] = "detail"
    m, problems = validate_draft(draft, CHART)
    got = {(p["key"], p["value"], p["message"]) for p in problems}
    assert ("categories.dispute", "4999", "account is not in chart_of_accounts") in got
    # Any category string Stripe may add is accepted (a warning); one that cannot be a category is not.
    assert ("categories.Made Up", "Made Up", "a reporting category is lower-case letters, digits and '_'") in got


def test_invoice_driven_revenue_needs_detail_posting_as_the_load_does():
    _, problems = validate_draft({**copy.deepcopy(BASE), "revenue_mode": "invoice_driven"}, CHART)
    assert problems == [
        {
            "key": "revenue_mode",
            "value": "invoice_driven",
            "message": "invoice_driven needs posting_mode detail (a payout summary already books revenue)",
        }
    ]
    assert (
        validate_draft({**copy.deepcopy(BASE), "revenue_mode": "invoice_driven", "posting_mode": "detail"}, CHART)[1]
        == []
    )


def test_an_inactive_or_header_or_missing_sage_account_cannot_be_used():
    chart = {**CHART, "4060": {**CHART["4060"], "active": False}, "6110": {**CHART["6110"], "postable": False}}
    del chart["7900"]
    m, problems = validate_draft(copy.deepcopy(BASE), chart)
    assert m is not None
    got = {(p["key"], p["message"]) for p in problems}
    assert ("categories.dispute", "account is inactive in Sage") in got
    assert ("fees.by_category.dispute", "account is a header account in Sage (not postable)") in got
    assert ("accounts.fx_gain_loss", "account does not exist in Sage") in got
    assert validate_draft(copy.deepcopy(BASE), CHART) == (m, [])
    assert validate_draft(copy.deepcopy(BASE), None)[1][0]["key"] == "<sage>"


# -- access rules -----------------------------------------------------------------------------------


def test_binding_off_loopback_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "s3cret")
    with pytest.raises(BindRefused, match="without a token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(BindRefused):
        check_bind("192.168.1.20", "")
    assert host_name("127.0.0.1:3100") == "127.0.0.1" and host_name("[::1]:80") == "[::1]"


def _client(tmp_path: Path, token: str | None = None, client_host: str = "127.0.0.1"):
    from starlette.testclient import TestClient

    (tmp_path / "mapping.yaml").write_text(TEXT)
    config = StudioConfig(
        database_url="postgresql://postgres@127.0.0.1:1/none",
        mapping_file=tmp_path / "mapping.yaml",
        sage_base_url="http://127.0.0.1:1/sagepro/v1/PRO01",
        sage_user="u",
        sage_password="p",
        token=token,
    )
    return TestClient(create_app(config), base_url="http://127.0.0.1:3100", client=(client_host, 40000))


def test_without_a_token_only_loopback_clients_and_hosts_are_served(tmp_path):
    assert _client(tmp_path).get("/healthz").status_code == 200
    assert _client(tmp_path, client_host="10.0.0.5").get("/healthz").status_code == 403
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host header.
    assert _client(tmp_path).get("/healthz", headers={"host": "evil.example"}).status_code == 403


def test_with_a_token_every_request_needs_it_and_the_link_sets_a_cookie(tmp_path):
    c = _client(tmp_path, token="s3cret", client_host="10.0.0.5")
    assert c.get("/healthz").status_code == 403
    assert c.get("/healthz?token=wrong").status_code == 403
    r = c.get("/healthz?token=s3cret", follow_redirects=False)
    assert r.status_code == 303 and "token" not in r.headers["location"]
    assert c.get("/healthz").status_code == 200  # the cookie now carries it
    assert (
        _client(tmp_path, token="s3cret").get("/healthz", headers={"authorization": "Bearer s3cret"}).status_code == 200
    )


def test_posts_need_the_csrf_token_and_the_same_origin(tmp_path):
    c = _client(tmp_path)
    body = {"draft": BASE}
    assert c.post("/api/validate", json=body).status_code == 403
    c.cookies.set(CSRF_COOKIE, "tok")
    assert c.post("/api/validate", json=body, headers={"x-csrf-token": "other"}).status_code == 403
    assert (
        c.post("/api/validate", json=body, headers={"x-csrf-token": "tok", "origin": "http://evil.example"}).status_code
        == 403
    )
    ok = c.post("/api/validate", json=body, headers={"x-csrf-token": "tok", "origin": "http://127.0.0.1:3100"})
    assert ok.status_code == 200
    # Sage is not reachable here: the validator passes, the chart check says saving is off.
    assert [p["key"] for p in ok.json()["problems"]] == ["<sage>"]
    # A form post (what a cross-site page can send without CORS) is refused even with the token.
    form = c.post("/api/save", data={"x": "1"}, headers={"x-csrf-token": "tok"})
    assert form.status_code == 400
    assert (tmp_path / "mapping.yaml").read_text() == TEXT
