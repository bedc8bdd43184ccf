"""The load stage's pure rules, over examples: pre-post invariants, journal entries, receipts, customers,
versioned refs, and the ledger's decision for every state (`decide`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pytest

from stripe_sage_pipeline.load.decide import Action, Kind, after_look_up, decide
from stripe_sage_pipeline.load.engine import account_problems, row_for, with_new_attempt
from stripe_sage_pipeline.load.ledger import MAX_REF, versioned_ref
from stripe_sage_pipeline.load.plan import (
    CUSTOMERS,
    JE,
    RECEIPTS,
    PlannedItem,
    entry_problems,
    plan_cash_receipt,
    plan_customer,
    plan_journal_entries,
    plan_journal_entry,
    receipt_candidates,
)
from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_pipeline.transform.mapping import load_mapping

MAPPING = load_mapping(PROJECT_ROOT / "mapping.yaml")
DAY = date(2025, 3, 4)


def line(
    account: str,
    debit: int = 0,
    credit: int = 0,
    *,
    currency: str = "usd",
    entry: str = "e1",
    ref: str = "txn_1",
    n: int = 1,
    **kw,
) -> dict:
    base = {
        "entry_id": entry,
        "posting_mode": "detail",
        "entry_type": "balance_transaction",
        "external_ref": ref,
        "posting_date": DAY,
        "line_number": n,
        "account_code": account,
        "debit": debit,
        "credit": credit,
        "currency": currency,
        "memo": f"Stripe charge {ref}",
        "accounting_category": "charge",
        "charge_id": "ch_1",
        "payout_id": None,
    }
    return {**base, **kw}


def charge_entry(gross: int = 10000, fee: int = 320, currency: str = "usd", ref: str = "txn_1") -> list[dict]:
    clearing = MAPPING.clearing_account(currency)
    return [
        line(clearing, debit=gross - fee, currency=currency, ref=ref, n=1),
        line("6100", debit=fee, currency=currency, ref=ref, n=2),
        line("4000", credit=gross, currency=currency, ref=ref, n=3),
    ]


# -- entry_problems: invariant 3 ---------------------------------------------------------------------


def test_a_balanced_entry_has_no_problems() -> None:
    assert entry_problems(charge_entry()) == []


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ([line("1150", debit=100), line("4000", credit=99)], "unbalanced: debits 100 != credits 99"),
        ([line("1150", debit=100, credit=100), line("4000", credit=0)], "needs exactly one non-negative side"),
        ([line("1150", debit=-5), line("4000", credit=-5)], "needs exactly one non-negative side"),
        ([line("1150", debit=0), line("4000", credit=0)], "needs exactly one non-negative side"),
        ([line("1150", debit=1.5), line("4000", credit=1.5)], "amounts must be integers"),
        ([line("1150", debit=True), line("4000", credit=True)], "amounts must be integers"),
        ([line("1150", debit=100)], "fewer than two lines"),
        ([line("1150", debit=100), line("4000", credit=100, currency="eur")], "more than one currency"),
    ],
)
def test_entry_problems_names_each_broken_invariant(lines: list[dict], needle: str) -> None:
    assert any(needle in p for p in entry_problems(lines)), entry_problems(lines)


# -- plan_journal_entry ------------------------------------------------------------------------------


def test_journal_entry_renders_amounts_with_the_currency_exponent() -> None:
    usd = plan_journal_entry(charge_entry(10000, 320, "usd"))
    assert [(ln["glacnt"], ln["debit"], ln["credit"]) for ln in usd.payload["lines"]] == [
        ("1150", "96.80", "0.00"),
        ("6100", "3.20", "0.00"),
        ("4000", "0.00", "100.00"),
    ]
    jpy = plan_journal_entry(charge_entry(1000, 36, "jpy"))  # zero-decimal: never divided by 100
    assert [ln["debit"] for ln in jpy.payload["lines"]][:2] == ["964", "36"]
    kwd = plan_journal_entry(charge_entry(12345, 5, "kwd"))  # three decimals
    assert kwd.payload["lines"][2]["credit"] == "12.345" and kwd.payload["currency"] == "KWD"


def test_journal_entry_identity_and_accounts() -> None:
    item = plan_journal_entry(charge_entry(ref="txn_ABC"))
    assert (item.resource, item.external_ref, item.item_key, item.partition_date) == (JE, "txn_ABC", "e1", DAY)
    assert item.payload["posting_date"] == "2025-03-04" and item.payload["journal"] == "ST"
    assert item.accounts == [("lines[0].glacnt", "1150"), ("lines[1].glacnt", "6100"), ("lines[2].glacnt", "4000")]
    assert item.problems == []
    assert all("txn_ABC" in ln["memo"] for ln in item.payload["lines"])


def test_content_hash_covers_what_is_booked_not_the_wording() -> None:
    a = plan_journal_entry(charge_entry())
    reworded = plan_journal_entry([{**ln, "memo": "another memo"} for ln in charge_entry()])
    assert reworded.content_hash == a.content_hash
    assert plan_journal_entry(charge_entry(10001)).content_hash != a.content_hash
    moved = [
        {**ln, "account_code": "4050" if ln["account_code"] == "4000" else ln["account_code"]} for ln in charge_entry()
    ]
    assert plan_journal_entry(moved).content_hash != a.content_hash


def test_a_negative_fee_is_a_credit_and_still_balances() -> None:
    # accounting.md: a fee returned (negative fee) becomes a credit on the fee account.
    lines = [line("1150", debit=10320), line("6100", credit=320, n=2), line("4000", credit=10000, n=3)]
    item = plan_journal_entry(lines)
    assert item.problems == [] and item.payload["lines"][1]["credit"] == "3.20"


def test_payout_summary_is_held_until_the_payout_reconciles() -> None:
    summary = [
        line("1010", debit=500, entry="po_1", ref="po_1", entry_type="payout_summary", payout_id="po_1"),
        line("1150", credit=500, entry="po_1", ref="po_1", n=2, entry_type="payout_summary", payout_id="po_1"),
    ]
    held = plan_journal_entries(summary, {"po_1": "incomplete"})
    assert held[0].hold_reason == "PayoutNotReconciled:incomplete"
    assert plan_journal_entries(summary, {})[0].hold_reason == "PayoutNotReconciled:missing"
    assert plan_journal_entries(summary, {"po_1": "reconciled"})[0].hold_reason is None
    assert plan_journal_entries(charge_entry() + summary, None, skip_entries={"e1"})[0].external_ref == "po_1"


# -- receipt_candidates and plan_cash_receipt -------------------------------------------------------


def test_receipt_candidates_take_charge_entries_with_an_invoice() -> None:
    facts = receipt_candidates(charge_entry(), {"ch_1": "ACME-1"}, MAPPING)
    assert facts == {
        "e1": {
            "charge_id": "ch_1",
            "custno": "ACME-1",
            "external_ref": "txn_1",
            "posting_date": DAY,
            "currency": "usd",
            "amount": 10000,
            "fee": 320,
            "fee_glacnt": "6100",
            "deposit_glacnt": "1150",
        }
    }


@pytest.mark.parametrize("change", ["no_invoice", "refund", "two_fees", "no_deposit"])
def test_receipt_candidates_skip_what_a_receipt_cannot_express(change: str) -> None:
    lines, invoiced = charge_entry(), {"ch_1": "ACME-1"}
    if change == "no_invoice":
        invoiced = {}
    elif change == "refund":
        lines = [{**ln, "accounting_category": "refund"} for ln in lines]
    elif change == "two_fees":
        lines = [*lines[:2], line("6110", debit=1, n=4), {**lines[2], "credit": 10001}]
    elif change == "no_deposit":
        lines = [{**ln, "account_code": "1010" if ln["account_code"] == "1150" else ln["account_code"]} for ln in lines]
    assert receipt_candidates(lines, invoiced, MAPPING) == {}


def test_cash_receipt_applies_to_the_posted_invoice_or_is_held() -> None:
    facts = receipt_candidates(charge_entry(), {"ch_1": "ACME-1"}, MAPPING)["e1"]
    item = plan_cash_receipt(facts, "INV-7")
    assert item.resource == RECEIPTS and item.hold_reason is None and item.depends_on == "ch_1"
    assert item.payload["amount"] == "100.00" and item.payload["fee_amount"] == "3.20"
    assert item.payload["applications"] == [{"invno": "INV-7", "amount": "100.00"}]
    assert item.accounts == [("deposit_glacnt", "1150"), ("fee_glacnt", "6100")]
    waiting = plan_cash_receipt(facts, None)
    assert waiting.hold_reason == "InvoiceNotPosted" and waiting.payload["applications"] == []
    assert waiting.content_hash != item.content_hash


# -- plan_customer -----------------------------------------------------------------------------------

CUSTOMER = {
    "customer_id": "cus_1",
    "custno": "ACME-1",
    "customer_name": "A" * 50,
    "email": "ap@acme.example",
    "phone": None,
    "address_line1": "1 Main St",
    "address_line2": "",
    "address_city": "Springfield",
    "address_state": "IL",
    "address_postal_code": "62701",
    "address_country": "us",
    "currency": "usd",
}


def test_customer_body_truncates_descriptive_fields_and_drops_empty_ones() -> None:
    item = plan_customer(CUSTOMER, [])
    assert item.resource == CUSTOMERS and item.external_ref == "cus_1"
    assert item.payload["company"] == "A" * 40 and item.payload["country"] == "US" and item.payload["currency"] == "USD"
    assert "phone" not in item.payload and "address2" not in item.payload
    assert item.payload["custno"] == "ACME-1"


def test_customer_hash_ignores_the_fields_sage_owns() -> None:
    base = plan_customer(CUSTOMER, ["email", "address"])
    edited = plan_customer({**CUSTOMER, "email": "new@acme.example", "address_city": "Chicago"}, ["email", "address"])
    assert edited.content_hash == base.content_hash
    renamed = plan_customer({**CUSTOMER, "customer_name": "Acme"}, ["email", "address"])
    assert renamed.content_hash != base.content_hash
    assert plan_customer({**CUSTOMER, "email": "x@y.z"}, []).content_hash != plan_customer(CUSTOMER, []).content_hash


# -- versioned_ref -----------------------------------------------------------------------------------


def test_versioned_ref() -> None:
    assert versioned_ref("txn_1", 1) == "txn_1"
    assert versioned_ref("txn_1", 2) == "txn_1~v2"
    assert versioned_ref("txn_1", 1, "r") == "txn_1~r1"
    long = "txn_" + "x" * 80
    v1, v2 = versioned_ref(long, 1), versioned_ref(long, 2)
    assert len(v1) == len(v2) == MAX_REF and v2.endswith("~v2") and v1 != v2
    assert versioned_ref(long, 2) == v2  # deterministic
    assert versioned_ref(long[:-1] + "y", 2) != v2  # the digest tells long refs apart


# -- account_problems --------------------------------------------------------------------------------


def test_account_problems() -> None:
    chart = {"1150": {"active": True}, "4000": {"active": False}, "6100": {"postable": False}}
    item = plan_journal_entry(charge_entry())
    codes = [(p["field"], p["code"]) for p in account_problems(chart, item)]
    assert codes == [("lines[1].glacnt", "AccountInactive"), ("lines[2].glacnt", "AccountInactive")]
    assert account_problems({}, item)[0]["code"] == "AccountNotFound"


# -- decide: the ledger state machine ----------------------------------------------------------------


@dataclass
class Row:
    status: str
    content_hash: str = "h1"
    version: int = 1


def item(resource: str = JE, chash: str = "h1", hold: str | None = None) -> PlannedItem:
    return PlannedItem(
        resource=resource,
        external_ref="txn_1",
        item_key="e1",
        partition_date=DAY,
        posting_mode="detail",
        payload={"x": 1},
        content_hash=chash,
        hold_reason=hold,
    )


@pytest.mark.parametrize(
    ("row", "planned", "redrive", "expected"),
    [
        (None, item(), False, Action(Kind.POST_NEW, 1)),
        (None, item(hold="PayoutNotReconciled:incomplete"), False, Action(Kind.HOLD)),
        (Row("posted", "h0"), item(hold="InvoiceNotPosted"), False, Action(Kind.HOLD)),
        (Row("computed"), item(), False, Action(Kind.RESEND, 1)),
        (Row("computed", "h0", 2), item(), False, Action(Kind.LOOK_UP, 2)),
        (Row("posted"), item(), False, Action(Kind.UNCHANGED)),
        (Row("posted", "h0", 1), item(), False, Action(Kind.REVERSE_AND_REPOST, 2)),
        (Row("posted", "h0", 3), item(RECEIPTS), False, Action(Kind.MANUAL_CORRECTION, 4)),
        (Row("posted", "h0", 1), item("invoices"), False, Action(Kind.MANUAL_CORRECTION, 2)),
        (Row("dead_lettered"), item(), False, Action(Kind.WAIT)),
        (Row("dead_lettered", "h0", 2), item(), True, Action(Kind.NEW_ATTEMPT, 2)),
        (Row("reversed", "h1", 2), item(), False, Action(Kind.POST_NEW_VERSION, 3)),
        (Row("posted"), item(), True, Action(Kind.UNCHANGED)),
    ],
)
def test_decide_for_every_ledger_state(row, planned, redrive, expected) -> None:
    assert decide(row, planned, redrive=redrive) == expected


def test_a_look_up_resolves_to_a_new_attempt_or_to_the_posted_rules() -> None:
    stale = Row("computed", "h0", 1)
    assert after_look_up(stale, item(), found=False) == Action(Kind.NEW_ATTEMPT, 1)
    assert after_look_up(stale, item(), found=True) == Action(Kind.REVERSE_AND_REPOST, 2)
    assert after_look_up(stale, item(RECEIPTS), found=True) == Action(Kind.MANUAL_CORRECTION, 2)


def test_decide_refuses_an_unknown_status() -> None:
    with pytest.raises(ValueError, match="unknown status 'archived'"):
        decide(Row("archived"), item())


def test_new_rows_and_attempts_get_deterministic_distinct_keys() -> None:
    v1, v2 = row_for(item(), 1), row_for(item(), 2)
    assert (v1.sage_ref, v2.sage_ref) == ("txn_1", "txn_1~v2") and v1.status == v2.status == "computed"
    assert row_for(item(), 1).idempotency_key == v1.idempotency_key != v2.idempotency_key
    retry = with_new_attempt(v1, item())
    assert retry.attempt == 2 and retry.version == 1 and retry.idempotency_key != v1.idempotency_key
