"""The books on a real Stripe account's cases, one worked example each, figures derived in the test:
manual payouts (and a switch from the automatic schedule), a payout that fails in transit and is
re-swept, discounts with exclusive and inclusive tax, tax reversed on refunds and lost disputes, an
invoice presented in another currency than it settles in; plus the golden example read from the
emulator at the pinned API version and at 2023-08-16.

Invariant of docs/accounting.md checked throughout: detail minus payout_summary, account by account,
is exactly the activity not yet paid out (zero once everything is paid out).
"""

from __future__ import annotations

from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from transform_helpers import bt, charge, golden, load_stripe_objects, movement, payout, query

from stripe_sage_pipeline.transform import build as transform

DAY = 86400
T0 = 1783934100  # 2026-07-13 09:15 UTC


def _net_legs(c: dict) -> dict[str, int]:
    """Detail legs of one simple USD transaction (default mapping): Dr clearing net, Dr fee, Cr counter."""
    return {"1150": c["net"], "6100": c["fee"]}


def _minor(movement_by_account: dict[str, Decimal]) -> dict[str, int]:
    return {k: int(v * 100) for k, v in movement_by_account.items() if v}


def _diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    keys = set(a) | set(b)
    return {k: a.get(k, 0) - b.get(k, 0) for k in keys if a.get(k, 0) - b.get(k, 0)}


def _entry(url: str, entry_id: str) -> dict[str, int]:
    rows = query(
        url, "select account_code, debit - credit as m from finance.fct_journal_lines where entry_id = %s", (entry_id,)
    )
    return {r["account_code"]: int(r["m"]) for r in rows}


def _not_paid_out(url: str) -> dict[str, int]:
    rows = query(url, "select account_code, net_amount from finance.fct_activity_not_paid_out")
    return {r["account_code"]: int(r["net_amount"]) for r in rows}


def _pro_rata(amount: int, tax: int, gross: int) -> int:
    """amount x tax / gross, rounded half away from zero (what the classification does)."""
    q = Decimal(amount) * tax / gross
    return int(q.copy_abs().quantize(Decimal(1), rounding=ROUND_HALF_UP)) * (1 if q >= 0 else -1)


# ---- manual payouts, and a switch from the automatic schedule -------------------------------------


def test_manual_payouts_after_a_switch_from_the_automatic_schedule(fresh_db: str) -> None:
    c0 = bt("txn_c0", 8000, 262, "charge", "ch_c0", created=T0 - 5 * DAY)
    p0 = bt("txn_p0", -7738, 0, "payout", "po_auto", created=T0 - 3 * DAY)
    # The account switches to manual payouts: nothing below is swept by an automatic payout.
    c1 = bt("txn_c1", 10000, 320, "charge", "ch_c1", created=T0 - 2 * DAY)
    c2 = bt("txn_c2", 5000, 175, "charge", "ch_c2", created=T0 - DAY)
    r1 = bt("txn_r1", -2000, 0, "refund", "re_r1", created=T0 - DAY + 3600)
    m1 = bt("txn_m1", -12000, 0, "payout", "po_manual1", created=T0)
    c3 = bt("txn_c3", 4500, 161, "charge", "ch_c3", created=T0 + 3600)  # after the manual payout
    manual = payout("po_manual1", 12000, "txn_m1", T0 + 2 * DAY)
    manual.update(automatic=False, created=T0)
    load_stripe_objects(
        fresh_db,
        {
            "charges": [
                charge("ch_c0", 8000, "txn_c0", created=T0 - 5 * DAY),
                charge("ch_c1", 10000, "txn_c1"),
                charge("ch_c2", 5000, "txn_c2"),
                charge("ch_c3", 4500, "txn_c3"),
            ],
            "refunds": [
                {
                    "id": "re_r1",
                    "object": "refund",
                    "amount": 2000,
                    "charge": "ch_c2",
                    "currency": "usd",
                    "created": T0 - DAY + 3600,
                    "balance_transaction": "txn_r1",
                    "status": "succeeded",
                    "metadata": {},
                }
            ],
            "balance_transactions": [c0, p0, c1, c2, r1, m1, c3],
            "payouts": [payout("po_auto", 7738, "txn_p0", T0 - DAY), manual],
            "balance_transactions_by_payout": {"po_auto": ["txn_c0", "txn_p0"]},
        },
    )
    transform.dbt_build(url=fresh_db)

    # The manual payout's summary: the activity of its range (c1, c2, r1) and its bank line; the
    # clearing line is what that activity added to the balance less what was paid out.
    paid_out_activity = [c1, c2, r1]
    clearing = sum(c["net"] for c in paid_out_activity) - 12000
    assert _entry(fresh_db, "summary:po_manual1") == {
        "1010": 12000,
        "1150": clearing,
        "6100": 320 + 175,
        "4000": -15000,
        "4050": 2000,
    }
    assert query(
        fresh_db, "select reconciliation_status from finance.fct_payout_reconciliation where payout_id = 'po_manual1'"
    ) == [{"reconciliation_status": "manual"}]
    # Detail minus summary = the activity not yet paid out (c3), account by account.
    detail, summary = _minor(movement(fresh_db, "detail")), _minor(movement(fresh_db, "payout_summary"))
    assert _diff(detail, summary) == {"1150": c3["net"], "6100": c3["fee"], "4000": -c3["amount"]}
    assert _not_paid_out(fresh_db) == _diff(detail, summary)
    # Bank = what Stripe paid out, in both modes.
    assert detail["1010"] == summary["1010"] == 7738 + 12000


# ---- a payout that fails in transit and is re-swept ------------------------------------------------


def test_a_payout_failed_in_transit_is_posted_with_the_payout_that_pays_it_out_again(fresh_db: str) -> None:
    c4 = bt("txn_c4", 10000, 320, "charge", "ch_c4", created=T0 - 4 * DAY)
    p1 = bt("txn_p1", -9680, 0, "payout", "po_failed", created=T0 - 3 * DAY)
    f1 = bt("txn_f1", 9680, 0, "payout_reversal", "po_failed", type_="payout_failure", created=T0 - 2 * DAY)
    c5 = bt("txn_c5", 5000, 175, "charge", "ch_c5", created=T0 - 2 * DAY + 60)
    p2 = bt("txn_p2", -(9680 + 4825), 0, "payout", "po_again", created=T0 - DAY)
    # Failed a day before its arrival date: never reached the bank.
    failed = payout("po_failed", 9680, "txn_p1", T0 - DAY, status="failed", failure_bt="txn_f1")
    load_stripe_objects(
        fresh_db,
        {
            "charges": [charge("ch_c4", 10000, "txn_c4"), charge("ch_c5", 5000, "txn_c5")],
            "balance_transactions": [c4, p1, f1, c5, p2],
            "payouts": [failed, payout("po_again", 9680 + 4825, "txn_p2", T0 + DAY)],
            "balance_transactions_by_payout": {
                "po_failed": ["txn_c4", "txn_p1"],
                "po_again": ["txn_f1", "txn_c5", "txn_p2"],
            },
        },
    )
    transform.dbt_build(url=fresh_db)

    # Nothing for the failed payout (never paid: no bank entry, no reversal) in either mode ...
    assert (
        query(
            fresh_db,
            "select entry_id from finance.fct_journal_lines where payout_id = 'po_failed' "
            "and entry_type <> 'balance_transaction'",
        )
        == []
    )
    # ... and the payout that paid its amount out again carries its activity: clearing nets to zero.
    assert _entry(fresh_db, "summary:po_again") == {"1010": 9680 + 4825, "6100": 320 + 175, "4000": -15000}
    detail, summary = _minor(movement(fresh_db, "detail")), _minor(movement(fresh_db, "payout_summary"))
    assert detail == summary and _not_paid_out(fresh_db) == {}
    assert summary["1010"] == 9680 + 4825 and "1150" not in summary
    recon = {
        r["payout_id"]: r["reconciliation_status"]
        for r in query(fresh_db, "select payout_id, reconciliation_status from finance.fct_payout_reconciliation")
    }
    assert recon == {"po_failed": "failed", "po_again": "reconciled"}


def test_a_negative_balance_debited_from_the_bank(fresh_db: str) -> None:
    d1 = bt("txn_d1", -8000, 1500, "dispute", "dp_neg", type_="adjustment", created=T0 - 2 * DAY)
    neg = bt("txn_pn", 9500, 0, "payout", "po_debit", created=T0 - DAY)  # the debit credits the balance
    debit = payout("po_debit", -9500, "txn_pn", T0 + DAY)
    load_stripe_objects(
        fresh_db,
        {
            "disputes": [
                {
                    "id": "dp_neg",
                    "object": "dispute",
                    "amount": 8000,
                    "charge": "ch_gone",
                    "currency": "usd",
                    "created": T0 - 2 * DAY,
                    "status": "lost",
                    "reason": "fraudulent",
                    "balance_transactions": [d1],
                    "metadata": {},
                }
            ],
            "balance_transactions": [d1, neg],
            "payouts": [debit],
            "balance_transactions_by_payout": {"po_debit": ["txn_d1", "txn_pn"]},
        },
    )
    transform.dbt_build(url=fresh_db)
    assert _entry(fresh_db, "summary:po_debit") == {"1010": -9500, "4060": 8000, "6110": 1500}
    assert _minor(movement(fresh_db, "detail")) == _minor(movement(fresh_db, "payout_summary"))


# ---- tax: discounts, inclusive prices, reversal on refunds and disputes ---------------------------


def _invoice_current(
    inv_id: str,
    pi: str,
    lines: list[dict],
    total: int,
    taxes: list[dict],
    discounts: list[dict] | None = None,
    currency: str = "usd",
) -> dict:
    """An invoice as API 2025-03-31+ renders it (total_taxes, payments; no charge / tax)."""
    return {
        "id": inv_id,
        "object": "invoice",
        "customer": None,
        "currency": currency,
        "created": T0,
        "status": "paid",
        "number": inv_id.upper(),
        "subtotal": sum(li["amount"] for li in lines),
        "total": total,
        "amount_paid": total,
        "total_taxes": taxes,
        "total_discount_amounts": discounts or [],
        "metadata": {},
        "lines": {"object": "list", "data": lines, "has_more": False, "url": f"/v1/invoices/{inv_id}/lines"},
        "payments": {
            "object": "list",
            "has_more": False,
            "url": f"/v1/invoices/{inv_id}/payments",
            "data": [
                {
                    "id": "inpay_" + inv_id,
                    "object": "invoice_payment",
                    "invoice": inv_id,
                    "is_default": True,
                    "amount_paid": total,
                    "payment": {"type": "payment_intent", "payment_intent": pi},
                    "status": "paid",
                }
            ],
        },
    }


def _tax(amount: int, behavior: str, taxable: int) -> dict:
    return {
        "amount": amount,
        "tax_behavior": behavior,
        "taxable_amount": taxable,
        "type": "tax_rate_details",
        "tax_rate_details": {"tax_rate": "txr_1"},
        "taxability_reason": "standard_rated",
    }


def test_discount_with_exclusive_tax_and_a_tax_inclusive_price(fresh_db: str) -> None:
    # A 100.00 line with a 10.00 coupon, 8.25 % tax on the discounted 90.00, added on top.
    line, coupon = 10000, 1000
    tax_x = int((Decimal(line - coupon) * Decimal("0.0825")).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    total_x = line - coupon + tax_x
    inv_x = _invoice_current(
        "in_disc",
        "pi_disc",
        [
            {
                "id": "il_d",
                "object": "line_item",
                "amount": line,
                "quantity": 1,
                "description": "Pro plan",
                "discount_amounts": [{"amount": coupon, "discount": "di_1"}],
                "taxes": [_tax(tax_x, "exclusive", line - coupon)],
                "pricing": {"type": "price_details", "unit_amount_decimal": str(line)},
            }
        ],
        total_x,
        [_tax(tax_x, "exclusive", line - coupon)],
        [{"amount": coupon, "discount": "di_1"}],
    )
    # A 108.00 price that includes 8.00 of VAT (20 % on 40.00 and 0 % on 60.00 would read the same).
    incl_price, incl_tax = 10800, 800
    inv_i = _invoice_current(
        "in_incl",
        "pi_incl",
        [
            {
                "id": "il_i",
                "object": "line_item",
                "amount": incl_price,
                "quantity": 2,
                "description": "Widget",
                "discount_amounts": [],
                "taxes": [_tax(incl_tax, "inclusive", incl_price - incl_tax)],
                "pricing": {"type": "price_details", "unit_amount_decimal": "5400"},
            }
        ],
        incl_price,
        [_tax(incl_tax, "inclusive", incl_price - incl_tax)],
    )
    fee_x, fee_i = 30 + (total_x * 29 + 500) // 1000, 30 + (incl_price * 29 + 500) // 1000
    ch_x = charge("ch_disc", total_x, "txn_disc")
    ch_i = charge("ch_incl", incl_price, "txn_incl")
    ch_x["payment_intent"], ch_i["payment_intent"] = "pi_disc", "pi_incl"
    del ch_x["invoice"], ch_i["invoice"]  # current shapes: a charge no longer names its invoice
    load_stripe_objects(
        fresh_db,
        {
            "charges": [ch_x, ch_i],
            "invoices": [inv_x, inv_i],
            "balance_transactions": [
                bt("txn_disc", total_x, fee_x, "charge", "ch_disc"),
                bt("txn_incl", incl_price, fee_i, "charge", "ch_incl"),
            ],
        },
        api_version="2026-10-28.endive",
    )
    transform.dbt_build(url=fresh_db)

    assert _entry(fresh_db, "detail:txn_disc") == {
        "1150": total_x - fee_x,
        "6100": fee_x,
        "4000": -(line - coupon),
        "2200": -tax_x,
    }
    assert _entry(fresh_db, "detail:txn_incl") == {
        "1150": incl_price - fee_i,
        "6100": fee_i,
        "4000": -(incl_price - incl_tax),
        "2200": -incl_tax,
    }
    docs = defaultdict(list)
    for r in query(fresh_db, "select * from finance.fct_invoice_lines order by document_key, line_number"):
        docs[r["charge_id"]].append(r)
    [x] = docs["ch_disc"]
    assert (x["line_amount"], x["tax_amount"], x["discount_amount"], x["document_total"]) == (
        line - coupon,
        tax_x,
        coupon,
        total_x,
    )
    [i] = docs["ch_incl"]
    assert (i["line_amount"], i["tax_amount"], i["document_total"]) == (incl_price - incl_tax, incl_tax, incl_price)
    assert (i["quantity"], i["unit_price"]) == (2, (incl_price - incl_tax) // 2)
    # The quality check that used to stop all posting on a coupon passes.
    from stripe_sage_pipeline.quality import run_suite

    assert run_suite("invoice_lines", fresh_db, scope="all").passed


def test_refunds_and_a_lost_dispute_take_back_their_share_of_the_tax(fresh_db: str) -> None:
    gross, tax = 10825, 825  # 100.00 + 8.25 tax, on an invoice
    partial = 5000
    charges, bts, refunds, invoices = [], [], [], []
    for n in ("full", "part", "disp"):
        ch = charge(f"ch_{n}", gross, f"txn_c_{n}")
        ch["payment_intent"] = f"pi_{n}"
        del ch["invoice"]
        charges.append(ch)
        invoices.append(
            _invoice_current(
                f"in_{n}",
                f"pi_{n}",
                [
                    {
                        "id": f"il_{n}",
                        "object": "line_item",
                        "amount": gross - tax,
                        "quantity": 1,
                        "description": "Plan",
                        "taxes": [_tax(tax, "exclusive", gross - tax)],
                    }
                ],
                gross,
                [_tax(tax, "exclusive", gross - tax)],
            )
        )
        bts.append(bt(f"txn_c_{n}", gross, 344, "charge", f"ch_{n}"))
    for n, amount in (("full", gross), ("part", partial)):
        refunds.append(
            {
                "id": f"re_{n}",
                "object": "refund",
                "amount": amount,
                "charge": f"ch_{n}",
                "currency": "usd",
                "created": T0 + DAY,
                "balance_transaction": f"txn_r_{n}",
                "status": "succeeded",
                "metadata": {},
            }
        )
        bts.append(bt(f"txn_r_{n}", -amount, 0, "refund", f"re_{n}", created=T0 + DAY))
    dispute_bt = bt("txn_dp", -gross, 1500, "dispute", "dp_disp", type_="adjustment", created=T0 + 2 * DAY)
    bts.append(dispute_bt)
    load_stripe_objects(
        fresh_db,
        {
            "charges": charges,
            "invoices": invoices,
            "refunds": refunds,
            "balance_transactions": bts,
            "disputes": [
                {
                    "id": "dp_disp",
                    "object": "dispute",
                    "amount": gross,
                    "charge": "ch_disp",
                    "currency": "usd",
                    "created": T0 + 2 * DAY,
                    "status": "lost",
                    "reason": "fraudulent",
                    "balance_transactions": [dispute_bt],
                    "metadata": {},
                }
            ],
        },
        api_version="2026-10-28.endive",
    )
    transform.dbt_build(url=fresh_db)

    # A full refund of a 108.25 charge with 8.25 tax: 100.00 contra-revenue, 8.25 back off tax payable.
    assert _entry(fresh_db, "detail:txn_r_full") == {"4050": gross - tax, "2200": tax, "1150": -gross}
    # A partial refund takes the same share of the tax: 50.00 x 8.25 / 108.25.
    part_tax = _pro_rata(-partial, tax, gross)
    assert part_tax == -381
    assert _entry(fresh_db, "detail:txn_r_part") == {"4050": partial + part_tax, "2200": -part_tax, "1150": -partial}
    # A lost dispute: the chargeback is net of tax, the dispute fee stays a fee.
    assert _entry(fresh_db, "detail:txn_dp") == {"4060": gross - tax, "2200": tax, "6110": 1500, "1150": -gross - 1500}
    # Tax payable: what was charged less what was refunded or charged back.
    tb = _minor(movement(fresh_db, "detail"))
    assert tb["2200"] == -3 * tax + tax + (-part_tax) + tax


def test_tax_reversal_can_be_switched_off(fresh_db: str, tmp_path: Path) -> None:
    import yaml

    from stripe_sage_pipeline.settings import PROJECT_ROOT
    from stripe_sage_pipeline.transform.mapping import parse_mapping

    data = yaml.safe_load((PROJECT_ROOT / "mapping.yaml").read_text())
    data["tax"]["reverse_on_refunds"] = False
    load_stripe_objects(
        fresh_db,
        {
            "charges": [charge("ch_m", 10800, "txn_m", metadata={"tax_amount": "800"})],
            "refunds": [
                {
                    "id": "re_m",
                    "object": "refund",
                    "amount": 10800,
                    "charge": "ch_m",
                    "currency": "usd",
                    "created": T0 + DAY,
                    "balance_transaction": "txn_rm",
                    "status": "succeeded",
                    "metadata": {},
                }
            ],
            "balance_transactions": [
                bt("txn_m", 10800, 343, "charge", "ch_m"),
                bt("txn_rm", -10800, 0, "refund", "re_m"),
            ],
        },
    )
    transform.dbt_build(url=fresh_db, mapping=parse_mapping(data))
    assert _entry(fresh_db, "detail:txn_rm") == {"4050": 10800, "1150": -10800}
    transform.dbt_build(url=fresh_db)  # the default: on (metadata tax is reversed too)
    assert _entry(fresh_db, "detail:txn_rm") == {"4050": 10000, "2200": 800, "1150": -10800}


# ---- an invoice presented in EUR that settles in USD -----------------------------------------------


def test_presentment_currency_invoice_is_posted_in_the_settlement_currency(fresh_db: str) -> None:
    net_eur, vat_eur = 10000, 1900  # 100.00 EUR + 19.00 VAT
    rate = Decimal("1.1")  # USD per EUR, Stripe's exchange_rate on the balance transaction
    gross_usd = int(Decimal(net_eur + vat_eur) * rate)  # 130.90 USD
    vat_usd = int((Decimal(vat_eur) * rate).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    fee = 30 + (gross_usd * 29 + 500) // 1000
    ch = charge("ch_eur", net_eur + vat_eur, "txn_eur", currency="eur", customer="cus_eu")
    ch["payment_intent"] = "pi_eur"
    del ch["invoice"]
    inv = _invoice_current(
        "in_eur",
        "pi_eur",
        [
            {
                "id": "il_e",
                "object": "line_item",
                "amount": net_eur,
                "quantity": 1,
                "description": "Annual plan",
                "taxes": [_tax(vat_eur, "exclusive", net_eur)],
            }
        ],
        net_eur + vat_eur,
        [_tax(vat_eur, "exclusive", net_eur)],
        currency="eur",
    )
    load_stripe_objects(
        fresh_db,
        {
            "customers": [
                {
                    "id": "cus_eu",
                    "object": "customer",
                    "created": T0 - DAY,
                    "name": "Globex GmbH",
                    "email": "ap@globex.example",
                    "livemode": False,
                    "metadata": {},
                }
            ],
            "charges": [ch],
            "invoices": [inv],
            "balance_transactions": [bt("txn_eur", gross_usd, fee, "charge", "ch_eur", exchange_rate=float(rate))],
        },
        api_version="2026-10-28.endive",
    )
    transform.dbt_build(url=fresh_db)

    [line] = query(fresh_db, "select * from finance.fct_invoice_lines where charge_id = 'ch_eur'")
    assert line["currency"] == "usd" and line["presentment_currency"] == "eur"
    assert (line["document_total"], line["tax_amount"], line["line_amount"]) == (
        gross_usd,
        vat_usd,
        gross_usd - vat_usd,
    )
    assert line["presentment_total"] == net_eur + vat_eur and Decimal(str(line["exchange_rate"])) == rate
    # The journal entry's revenue and tax are the invoice's: the receipt (the charge's gross) clears AR.
    assert _entry(fresh_db, "detail:txn_eur") == {
        "1150": gross_usd - fee,
        "6100": fee,
        "4000": -(gross_usd - vat_usd),
        "2200": -vat_usd,
    }
    from stripe_sage_pipeline.load.plan import plan_invoices

    rows = query(
        fresh_db,
        "select l.*, 'GLOBE-0001' as custno_override from finance.fct_invoice_lines as l where charge_id = 'ch_eur'",
    )
    for r in rows:
        r["custno"] = r["custno"] or r["custno_override"]
    [planned] = plan_invoices(rows)
    assert planned.payload["currency"] == "USD" and planned.payload["totals"]["total"] == "130.90"
    assert not planned.problems


# ---- the golden example read from the emulator at both API versions --------------------------------


@pytest.mark.parametrize("api_version", ["2026-10-28.endive", "2023-08-16"])
def test_golden_example_read_at_each_api_version(
    api_version: str, fresh_db: str, golden_path: Path, monkeypatch
) -> None:
    import stripe

    from stripe_sage_pipeline.extract import extract
    from stripe_sage_pipeline.extract.client import StripeReader
    from stripe_sage_pipeline.extract.tables import TABLES
    from stripe_sage_pipeline.runtime.db import libpq_url
    from stripe_sage_sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState, load_golden

    if api_version != "2023-08-16":
        assert api_version == stripe.api_version  # the version the pinned SDK speaks is the default
    monkeypatch.setenv("STRIPE_API_VERSION", api_version)
    g = golden(golden_path)
    state = load_golden(EmulatorState(EmulatorConfig(api_key="sk_test_emulator")), golden_path)
    srv = EmulatorServer(state, port=0).start()
    try:
        reader = StripeReader("sk_test_emulator", srv.url, rate_limit_per_s=None)
        assert reader.api_version == api_version
        import psycopg

        from stripe_sage_pipeline.extract.staging import ensure_schema

        with psycopg.connect(libpq_url(fresh_db)) as conn:
            ensure_schema(conn)
        created = [o["created"] for k in TABLES for o in g["stripe"].get(k, [])]
        start, end = min(created) - min(created) % 3600, max(created) + 3600
        for table in TABLES:
            extract.extract_window(reader, libpq_url(fresh_db), table, start, end)
    finally:
        srv.stop()
    versions = query(fresh_db, "select distinct _api_version from stripe_staging.balance_transactions")
    assert versions == [{"_api_version": api_version}]
    transform.dbt_build(url=fresh_db)
    tb = {k: Decimal(v) for k, v in g["expected"]["trial_balance_change_after_both_payouts"].items() if k != "note"}
    for mode in ("detail", "payout_summary"):
        got = movement(fresh_db, mode)
        assert {k: v for k, v in got.items() if v} == {k: v for k, v in tb.items() if v}, mode
