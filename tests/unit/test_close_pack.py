"""Close pack rules and its HTML without servers: per-day payouts vs bank, GL movement, tie-out, verdict.

(The PNG chart is drawn by matplotlib in the integration test, which writes the whole pack.)"""

from __future__ import annotations

from datetime import date

from stripe_sage_pipeline.reporting import closepack as cp
from stripe_sage_pipeline.reporting.render import render_html

CHART = {"payouts_vs_bank": b"\x89PNG-not-drawn-here"}


def posting(glacnt, day, debit, credit, currency="USD"):
    return {"glacnt": glacnt, "posting_date": day, "debit": debit, "credit": credit, "currency": currency}


def test_stripe_paid_out_counts_a_failed_payout_on_arrival_and_takes_it_back_on_failure():
    payouts = [
        {
            "payout_id": "po_a",
            "currency": "usd",
            "payout_status": "paid",
            "amount": 10000,
            "arrival_date": date(2026, 7, 2),
        },
        {
            "payout_id": "po_b",
            "currency": "usd",
            "payout_status": "failed",
            "amount": 5000,
            "arrival_date": date(2026, 7, 3),
        },
        {
            "payout_id": "po_c",
            "currency": "usd",
            "payout_status": "failed",
            "amount": 700,
            "arrival_date": date(2026, 7, 3),
        },
        {
            "payout_id": "po_d",
            "currency": "jpy",
            "payout_status": "in_transit",
            "amount": 900,
            "arrival_date": date(2026, 7, 4),
        },
    ]
    # po_b was paid, then returned on the 6th; po_c failed before it ever arrived (no reversal).
    got = cp.stripe_paid_out_by_day(payouts, {"po_b": date(2026, 7, 6)})
    assert got == {("usd", date(2026, 7, 2)): 10000, ("usd", date(2026, 7, 3)): 5000, ("usd", date(2026, 7, 6)): -5000}


def test_sage_bank_by_day_and_gl_movement_read_exact_decimals_per_currency():
    postings = [
        posting("1010", "2026-07-02", "100.00", "0.00"),
        posting("1150", "2026-07-02", "0.00", "100.00"),
        posting("1010", "2026-07-02", "5000", "0", "JPY"),
        posting("1150", "2026-07-02", "0", "5000", "JPY"),
        posting("1010", "2026-07-03", "0.000", "12.500", "KWD"),
        posting("9999", "2026-07-03", "12.500", "0.000", "KWD"),
    ]
    assert cp.sage_bank_by_day(postings, {"usd": "1010", "jpy": "1010", "kwd": "1010"}) == {
        ("usd", date(2026, 7, 2)): 10000,
        ("jpy", date(2026, 7, 2)): 5000,
        ("kwd", date(2026, 7, 3)): -12500,
    }
    mv = cp.gl_movement(postings)
    assert mv == {
        ("usd", "1010"): 10000,
        ("usd", "1150"): -10000,
        ("jpy", "1010"): 5000,
        ("jpy", "1150"): -5000,
        ("kwd", "1010"): -12500,
        ("kwd", "9999"): 12500,
    }


def test_tie_out_compares_bank_with_paid_out_and_nets_the_trial_balance():
    sage = {("usd", "1010"): 10000, ("usd", "1150"): -9000, ("usd", "6100"): -1000}
    t = cp.tie_out(["usd"], sage, {("usd", date(2026, 7, 2)): 10000}, {"usd": "1010"})[0]
    assert (t.sage_bank, t.stripe_paid_out, t.trial_balance, t.ok) == (10000, 10000, 0, True)
    t = cp.tie_out(["usd"], {**sage, ("usd", "6100"): -999}, {("usd", date(2026, 7, 2)): 9999}, {"usd": "1010"})[0]
    assert (t.bank_ties, t.balanced) == (False, False)


def _pack(**kw):
    first, last = date(2026, 7, 1), date(2026, 7, 31)
    days = cp.daily_rows(
        ["usd"], cp.month_days(first, last), {("usd", date(2026, 7, 2)): 10000}, {("usd", date(2026, 7, 2)): 10000}
    )
    base = dict(
        month="2026-07",
        first=first,
        last=last,
        posting_mode="payout_summary",
        base_currency="usd",
        days=days,
        payouts=[
            {
                "payout_id": "po_a",
                "arrival_date": date(2026, 7, 2),
                "currency": "usd",
                "amount": 10000,
                "gross": 11000,
                "fees": 1000,
                "net_of_items": 10000,
                "difference": 0,
                "item_count": 3,
                "reconciliation_status": "reconciled",
                "sage_status": "posted",
            }
        ],
        gl=cp.gl_rows(
            {("usd", "1010"): 10000, ("usd", "1150"): -10000},
            {("usd", "1010"): 10000, ("usd", "1150"): -10000},
            {"1010": "Operating Bank"},
        ),
        suspense=[],
        dead_letters=[],
        held=[],
        tie_out=cp.tie_out(
            ["usd"],
            {("usd", "1010"): 10000, ("usd", "1150"): -10000},
            {("usd", date(2026, 7, 2)): 10000},
            {"usd": "1010"},
        ),
    )
    base.update(kw)
    return cp.ClosePack(**base)


def test_a_clean_month_says_so_with_its_chart_embedded():
    pack = _pack()
    assert pack.ok and pack.attention() == [] and pack.summary()["ties_out"]
    html = render_html(pack, CHART)
    assert "The month closes clean" in html and "100.00" in html and "data:image/png;base64,iVBOR" in html


def test_suspense_dead_letters_and_held_entries_make_the_month_need_attention():
    pack = _pack(
        suspense=[
            {
                "external_ref": "po_a",
                "balance_transaction_id": "txn_d",
                "posting_date": date(2026, 7, 2),
                "currency": "usd",
                "reporting_category": "dispute",
                "accounting_category": "dispute",
                "balance_transaction_type": "adjustment",
                "amount": 5000,
                "source_id": "dp_1",
            }
        ],
        held=[
            {
                "external_ref": "po_b",
                "posting_date": date(2026, 7, 3),
                "currency": "usd",
                "reason": "PayoutNotReconciled:incomplete",
                "difference": 0,
                "missing_count": 1,
            }
        ],
    )
    assert not pack.ok and pack.attention() == ["1 transaction in suspense", "1 held entry"]
    html = render_html(pack, CHART)
    assert "needs attention: 1 transaction in suspense; 1 held entry" in html
    assert "PayoutNotReconciled:incomplete" in html and "50.00" in html and "txn_d" in html
