"""dbt transformations against the worked example and the edge cases of accounting.md."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from transform_helpers import bt, charge, execute, golden, load_stripe_objects, movement, payout, query

from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_pipeline.transform import build as transform
from stripe_sage_pipeline.transform.mapping import parse_mapping

# Incremental tests pin the look-backs to zero so that "only the new window" is exact.
NO_LOOKBACK = {"lookback_hours": 0, "extracted_lookback_minutes": 0}


def test_golden_example_reproduced_in_both_modes(fresh_db: str, golden_marts) -> None:
    g = golden_marts.clone_into(fresh_db)  # the golden objects loaded and `dbt build` run (once per session)
    expected = g["expected"]

    recon = {r["payout_id"]: r for r in query(fresh_db, "select * from finance.fct_payout_reconciliation")}
    for payout_id, exp in expected["payout_reconciliation"].items():
        row = recon[payout_id]
        assert str(row["payout_amount_decimal"]) == exp["payout_amount"]
        assert str(row["gross_decimal"]) == exp["gross"]
        assert str(row["fees_decimal"]) == exp["fees"]
        assert str(row["net_of_items_decimal"]) == exp["net_of_items"]
        assert str(row["difference_decimal"]) == exp["difference"]
        assert row["reconciliation_status"] == "reconciled"

    entry = expected["payout_summary_journal_po_GOLD0001"]
    lines = query(
        fresh_db, "select * from finance.fct_journal_lines where entry_id = 'summary:po_GOLD0001' order by line_number"
    )
    assert {str(line["posting_date"]) for line in lines} == {entry["posting_date"]}
    assert {line["external_ref"] for line in lines} == {entry["external_ref"]}
    got = {line["account_code"]: (str(line["debit_amount"]), str(line["credit_amount"])) for line in lines}
    want = {e["glacnt"]: (e.get("debit", "0.00"), e.get("credit", "0.00")) for e in entry["lines"]}
    assert got == want
    assert str(sum(line["debit_amount"] for line in lines)) == entry["total_debit"]
    assert str(sum(line["credit_amount"] for line in lines)) == entry["total_credit"]

    tb = {k: Decimal(v) for k, v in expected["trial_balance_change_after_both_payouts"].items() if k != "note"}
    for mode in ("detail", "payout_summary"):
        got_tb = movement(fresh_db, mode)
        for account, amount in tb.items():
            assert got_tb.get(account, Decimal("0.00")) == amount, (mode, account)
        assert set(got_tb) <= set(tb), mode
    # Detail mode: one entry per balance transaction (the payout's own one is its bank entry).
    detail_entries = query(
        fresh_db, "select distinct external_ref from finance.fct_journal_lines where posting_mode = 'detail'"
    )
    assert {r["external_ref"] for r in detail_entries} == {b["id"] for b in g["stripe"]["balance_transactions"]}


def test_incremental_touches_only_new_window_and_equals_full_refresh(fresh_db: str, golden_path: Path) -> None:
    g = golden(golden_path)["stripe"]
    first_bts = set(g["balance_transactions_by_payout"]["po_GOLD0000"])
    first = {
        "customers": g["customers"],
        "charges": [c for c in g["charges"] if c["id"] == "ch_GOLD0000"],
        "balance_transactions": [b for b in g["balance_transactions"] if b["id"] in first_bts],
        "payouts": [p for p in g["payouts"] if p["id"] == "po_GOLD0000"],
        "balance_transactions_by_payout": {"po_GOLD0000": g["balance_transactions_by_payout"]["po_GOLD0000"]},
    }
    load_stripe_objects(fresh_db, first)
    transform.dbt_build(url=fresh_db, vars=NO_LOOKBACK)
    before = {
        r["journal_line_id"]: r["_loaded_at"]
        for r in query(fresh_db, "select journal_line_id, _loaded_at from finance.fct_journal_lines")
    }

    # Only what is new is extracted again (an upsert refreshes _extracted_at, i.e. marks a row changed).
    second = {
        "charges": [c for c in g["charges"] if c["id"] != "ch_GOLD0000"],
        "refunds": g["refunds"],
        "disputes": g["disputes"],
        "balance_transactions": [b for b in g["balance_transactions"] if b["id"] not in first_bts],
        "payouts": [p for p in g["payouts"] if p["id"] == "po_GOLD0001"],
        "balance_transactions_by_payout": {"po_GOLD0001": g["balance_transactions_by_payout"]["po_GOLD0001"]},
    }
    load_stripe_objects(fresh_db, second)
    transform.dbt_build(url=fresh_db, vars=NO_LOOKBACK)
    after = query(fresh_db, "select journal_line_id, entry_id, _loaded_at from finance.fct_journal_lines")
    touched = {r["entry_id"] for r in after if before.get(r["journal_line_id"]) != r["_loaded_at"]}
    # Only the new payout's entries and transactions were rebuilt; po_GOLD0000's stayed as they were.
    assert touched and all("GOLD0000" not in e and "GOLDc0" not in e and "GOLDp0" not in e for e in touched)
    assert {e for e in touched if e.startswith("summary:")} == {"summary:po_GOLD0001"}
    incremental = query(
        fresh_db,
        "select journal_line_id, debit, credit, account_code, posting_date from finance.fct_journal_lines order by 1",
    )
    incremental_tb = movement(fresh_db, "payout_summary")

    transform.dbt_build(url=fresh_db, full_refresh=True)
    full = query(
        fresh_db,
        "select journal_line_id, debit, credit, account_code, posting_date from finance.fct_journal_lines order by 1",
    )
    assert incremental == full
    assert incremental_tb == movement(fresh_db, "payout_summary")


DAY = 86400
T0 = 1783934100  # 2026-07-13 09:15 UTC


def _edge_case_objects() -> dict:
    """JPY and KWD settlements, a returned fee, a won dispute, a failed payout, an unmapped category, an invoice."""
    bts = [
        bt("txn_jpy_c", 5000, 180, "charge", "ch_jpy", currency="jpy"),
        bt("txn_jpy_p", -4820, 0, "payout", "po_jpy", currency="jpy", created=T0 + DAY),
        bt("txn_kwd_c", 12500, 400, "charge", "ch_kwd", currency="kwd"),
        bt("txn_usd_c", 10000, 320, "charge", "ch_usd"),
        bt(
            "txn_usd_r",
            -5000,
            -150,
            "refund",
            "re_usd",
            fee_details=[
                {
                    "amount": -150,
                    "currency": "usd",
                    "type": "stripe_fee",
                    "description": "fee returned",
                    "application": None,
                }
            ],
        ),
        bt("txn_dp", -8000, 1500, "dispute", "dp_won", type_="adjustment"),
        bt("txn_dpr", 8000, 0, "dispute_reversal", "dp_won", type_="adjustment", created=T0 + DAY),
        bt("txn_odd", 700, 0, "stripe_category_added_later", None, type_="type_added_later"),
        bt("txn_adj", 700, 0, "other_adjustment", None, type_="adjustment"),
        bt("txn_inv_c", 10825, 344, "charge", "ch_inv"),
        bt("txn_fail_p", -3000, 0, "payout", "po_fail", created=T0 - 3 * DAY),
        bt("txn_fail_f", 3000, 0, "payout_reversal", "po_fail", type_="payout_failure", created=T0 - DAY),
    ]
    return {
        "charges": [
            charge("ch_jpy", 5000, "txn_jpy_c", currency="jpy"),
            charge("ch_kwd", 12500, "txn_kwd_c", currency="kwd"),
            charge("ch_usd", 10000, "txn_usd_c"),
            charge("ch_inv", 10825, "txn_inv_c", invoice="in_1", metadata={"tax_amount": "999"}),
        ],
        "invoices": [
            {
                "id": "in_1",
                "object": "invoice",
                "customer": None,
                "charge": "ch_inv",
                "currency": "usd",
                "created": T0,
                "status": "paid",
                "number": "INV-1",
                "subtotal": 10000,
                "tax": 825,
                "total": 10825,
                "amount_paid": 10825,
                "total_tax_amounts": [{"amount": 825}],
                "metadata": {},
                "lines": {
                    "object": "list",
                    "data": [
                        {
                            "id": "il_1",
                            "amount": 10000,
                            "quantity": 2,
                            "description": "Widget",
                            "price": {"unit_amount": 5000},
                            "tax_amounts": [{"amount": 825}],
                        }
                    ],
                },
            }
        ],
        "balance_transactions": bts,
        "payouts": [
            payout("po_jpy", 4820, "txn_jpy_p", T0 + 2 * DAY, currency="jpy"),
            payout("po_fail", 3000, "txn_fail_p", T0 - 2 * DAY, status="failed", failure_bt="txn_fail_f"),
        ],
        "balance_transactions_by_payout": {"po_jpy": ["txn_jpy_c", "txn_jpy_p"]},
    }


@pytest.fixture
def edge_mapping(tmp_path: Path):
    """The default mapping plus a JPY clearing/bank pair, to show clearing per settlement currency."""
    data = yaml.safe_load((PROJECT_ROOT / "mapping.yaml").read_text())
    data["chart_of_accounts"].update({"1151": "Stripe Clearing JPY", "1011": "Bank JPY"})
    data["currencies"]["jpy"] = {"clearing": "1151", "bank": "1011"}
    return parse_mapping(data)


def _lines(url: str, entry_id: str) -> dict[str, tuple[str, str]]:
    rows = query(
        url,
        "select account_code, debit_amount, credit_amount from finance.fct_journal_lines where entry_id = %s",
        (entry_id,),
    )
    return {r["account_code"]: (str(r["debit_amount"]), str(r["credit_amount"])) for r in rows}


def test_edge_cases(fresh_db: str, edge_mapping) -> None:
    load_stripe_objects(fresh_db, _edge_case_objects())
    transform.dbt_build(url=fresh_db, mapping=edge_mapping)

    # JPY: zero-decimal, its own clearing account, not divided by 100.
    assert _lines(fresh_db, "detail:txn_jpy_c") == {"1151": ("4820", "0"), "6100": ("180", "0"), "4000": ("0", "5000")}
    assert _lines(fresh_db, "summary:po_jpy") == {"1011": ("4820", "0"), "6100": ("180", "0"), "4000": ("0", "5000")}
    # KWD: three decimals.
    assert _lines(fresh_db, "detail:txn_kwd_c") == {
        "1150": ("12.100", "0.000"),
        "6100": ("0.400", "0.000"),
        "4000": ("0.000", "12.500"),
    }
    # A refund whose fee is returned: the fee becomes a credit.
    assert _lines(fresh_db, "detail:txn_usd_r") == {
        "4050": ("50.00", "0.00"),
        "1150": ("0.00", "48.50"),
        "6100": ("0.00", "1.50"),
    }
    # A won dispute: the reversal credits chargebacks back; the dispute fee stays on 6110.
    assert _lines(fresh_db, "detail:txn_dp") == {
        "4060": ("80.00", "0.00"),
        "6110": ("15.00", "0.00"),
        "1150": ("0.00", "95.00"),
    }
    assert _lines(fresh_db, "detail:txn_dpr") == {"1150": ("80.00", "0.00"), "4060": ("0.00", "80.00")}
    # Every category of Stripe's current list has an account: an adjustment is not suspense.
    assert _lines(fresh_db, "detail:txn_adj") == {"1150": ("7.00", "0.00"), "6900": ("0.00", "7.00")}
    # A category Stripe adds later (no mapping, no type fallback): suspense, flagged, not dropped.
    odd = query(
        fresh_db,
        "select account_code, credit_amount, is_unmapped from finance.fct_journal_lines where entry_id = 'detail:txn_odd' and credit > 0",
    )
    assert odd == [{"account_code": "9999", "credit_amount": Decimal("7.00"), "is_unmapped": True}]
    # Tax from the invoice wins over metadata; invoice lines come from the invoice.
    assert _lines(fresh_db, "detail:txn_inv_c") == {
        "1150": ("104.81", "0.00"),
        "6100": ("3.44", "0.00"),
        "4000": ("0.00", "100.00"),
        "2200": ("0.00", "8.25"),
    }
    inv = query(
        fresh_db,
        "select document_type, description, quantity, unit_price, line_amount, tax_amount, document_total from finance.fct_invoice_lines where charge_id = 'ch_inv'",
    )
    assert inv == [
        {
            "document_type": "invoice",
            "description": "Widget",
            "quantity": 2,
            "unit_price": 5000,
            "line_amount": 10000,
            "tax_amount": 825,
            "document_total": 10825,
        }
    ]
    # A payout that failed after it was paid: its entry stays and a reversing entry follows.
    assert _lines(fresh_db, "detail:po_fail") == {"1010": ("30.00", "0.00"), "1150": ("0.00", "30.00")}
    assert _lines(fresh_db, "detail:po_fail:reversal") == {"1150": ("30.00", "0.00"), "1010": ("0.00", "30.00")}
    assert _lines(fresh_db, "summary:po_fail:reversal") == {"1150": ("30.00", "0.00"), "1010": ("0.00", "30.00")}
    recon = {
        r["payout_id"]: r["reconciliation_status"]
        for r in query(fresh_db, "select payout_id, reconciliation_status from finance.fct_payout_reconciliation")
    }
    assert recon == {"po_jpy": "reconciled", "po_fail": "failed"}
    # Every entry balances to the minor unit, in both modes.
    unbalanced = query(
        fresh_db, "select entry_id from finance.fct_journal_lines group by entry_id having sum(debit) <> sum(credit)"
    )
    assert unbalanced == []


def test_custno_is_short_stable_and_unique(fresh_db: str, golden_path: Path) -> None:
    g = golden(golden_path)["stripe"]
    load_stripe_objects(fresh_db, {"customers": g["customers"]})
    transform.dbt_build(url=fresh_db, select="+dim_customers")
    first = {
        r["customer_id"]: r["custno"] for r in query(fresh_db, "select customer_id, custno from finance.dim_customers")
    }
    assert first == {"cus_GOLD0001": "ACMEC-0001", "cus_GOLD0002": "GLOBE-0001"}
    # A second Acme arrives, and the first one is renamed: nothing assigned changes.
    renamed = dict(g["customers"][0], name="Zeta Renamed")
    twin = dict(g["customers"][0], id="cus_GOLD0003", created=g["customers"][0]["created"] + 10)
    load_stripe_objects(fresh_db, {"customers": [renamed, twin]})
    transform.dbt_build(url=fresh_db, select="+dim_customers")
    second = {
        r["customer_id"]: r["custno"] for r in query(fresh_db, "select customer_id, custno from finance.dim_customers")
    }
    assert second == {**first, "cus_GOLD0003": "ACMEC-0002"}
    import re

    assert all(re.fullmatch(r"[A-Z0-9][A-Z0-9-]{0,9}", c) for c in second.values())


def test_views_and_unit_tests_run_only_when_the_code_or_the_views_changed(
    fresh_db: str, golden_path: Path, monkeypatch
) -> None:
    load_stripe_objects(fresh_db, golden(golden_path)["stripe"])
    views = {f"model.stripe_sage.{v}" for v in transform.staging_views()[1]}

    def ran(result: transform.DbtResult, prefix: str) -> set[str]:
        return {k for k in result.statuses if k.startswith(prefix)}

    def sessions() -> int:
        """Sessions the server has seen on the test's database (counted when a session ends)."""
        return query(fresh_db, "select sessions from pg_stat_database where datname = current_database()")[0][
            "sessions"
        ]

    before = sessions()
    first = transform.dbt_build(url=fresh_db)  # first build: everything
    assert views <= ran(first, "model.") and ran(first, "unit_test.")
    # dbt keeps a thread's connection from node to node (dbt_patches.reuse_connections): a handful of
    # sessions for the whole build (the preparation's, dbt's master and one per dbt thread, this query's:
    # 7 with one thread), where dbt alone opens one per node (78 for these 84 nodes).
    opened = sessions() - before
    assert opened <= 12 < len(first.statuses), (opened, len(first.statuses))

    # Same code, views present: the hourly run rebuilds the tables and runs their data tests only.
    assert transform.plan_build(fresh_db) == transform.BuildPlan(full_refresh=False, code_steps=False)
    second = transform.dbt_build(url=fresh_db)
    assert second.plan == transform.BuildPlan(full_refresh=False, code_steps=False)
    assert not views & ran(second, "model.") and not ran(second, "unit_test.")
    assert {"model.stripe_sage.int_balance_transactions__classified", "model.stripe_sage.fct_journal_lines"} <= ran(
        second, "model."
    )
    assert any("fct_journal_lines" in t for t in ran(second, "test."))
    assert query(fresh_db, "select count(*) as n from finance.fct_journal_lines")[0]["n"] > 0

    # A missing view, changed dbt code, or a changed mapping brings the code steps back.
    execute(fresh_db, "drop view finance_staging.stg_stripe__events cascade")  # with the views built on it
    plan = transform.plan_build(fresh_db)
    assert plan.code_steps and not plan.full_refresh and "missing" in plan.reasons[0]
    third = transform.dbt_build(url=fresh_db)
    assert views <= ran(third, "model.") and ran(third, "unit_test.")
    assert not transform.plan_build(fresh_db).code_steps

    # The builds above ran on one parse of the project, kept for the process; edited dbt code is parsed again.
    target = transform.build_target(fresh_db)
    kept = transform.parsed_manifest(target)
    assert kept is not None and transform.parsed_manifest(target) is kept
    real = transform.code_fingerprint()
    monkeypatch.setattr(transform, "code_fingerprint", lambda: real + "-edited")
    plan = transform.plan_build(fresh_db)
    assert plan.code_steps and not plan.full_refresh and "code changed" in plan.reasons[0]
    reparsed = transform.parsed_manifest(target)
    assert reparsed is not None and reparsed is not kept
    monkeypatch.setattr(transform, "code_fingerprint", lambda: real)

    execute(fresh_db, "update finance_config.settings set fingerprint = 'edited'")
    plan = transform.plan_build(fresh_db)
    assert plan.full_refresh and plan.code_steps and plan.flags() == ["--full-refresh"]


def test_a_failing_dbt_unit_test_is_reported_as_a_failed_blocking_check() -> None:
    from stripe_sage_pipeline.defs.transformation import UNIT_TEST_CHECK_SPECS, unit_test_results

    spec = next(s for s in UNIT_TEST_CHECK_SPECS if s.name == "classify_categories_fallback_and_suspense")
    assert spec.blocking and spec.asset_key.path == ["finance_intermediate", "int_balance_transactions__classified"]
    uid = "unit_test.stripe_sage.int_balance_transactions__classified.classify_categories_fallback_and_suspense"
    run_results = {
        "results": [
            {
                "unique_id": uid,
                "status": "fail",
                "message": "actual differs from expected: counter_account 9999 != 4000",
                "execution_time": 0.61,
            },
            {"unique_id": "model.stripe_sage.fct_journal_lines", "status": "skipped", "message": None},
        ]
    }
    [result] = unit_test_results(run_results, UNIT_TEST_CHECK_SPECS)
    assert (result.check_name, result.passed) == ("classify_categories_fallback_and_suspense", False)
    assert "9999 != 4000" in result.metadata["message"].value
    assert list(unit_test_results({"results": []}, UNIT_TEST_CHECK_SPECS)) == []  # skipped: nothing reported


def test_a_reread_transaction_that_did_not_change_is_not_rebuilt_downstream(fresh_db: str, golden_marts) -> None:
    golden_marts.clone_into(fresh_db)
    classified = (
        "select balance_transaction_id, _classified_at from finance_intermediate.int_balance_transactions__classified"
    )
    lines = "select journal_line_id, entry_id, _loaded_at from finance.fct_journal_lines"
    before_c = {r["balance_transaction_id"]: r["_classified_at"] for r in query(fresh_db, classified)}
    before_l = {r["journal_line_id"]: r["_loaded_at"] for r in query(fresh_db, lines)}

    # Nothing new, but every transaction is inside the 72-hour look-back: re-read, unchanged, not
    # rebuilt. (The 10-minute extraction look-back is off: it would re-read the payouts just loaded.)
    created_lookback_only = {"extracted_lookback_minutes": 0}
    transform.dbt_build(url=fresh_db, vars=created_lookback_only)
    assert {r["balance_transaction_id"]: r["_classified_at"] for r in query(fresh_db, classified)} == before_c
    assert {r["journal_line_id"]: r["_loaded_at"] for r in query(fresh_db, lines)} == before_l

    # One charge gets tax metadata and is extracted again: only its transaction and the entries it is in.
    execute(
        fresh_db,
        'update stripe_staging.charges set metadata = \'{"tax_amount": "100"}\'::jsonb, '
        "_extracted_at = now() where id = 'ch_GOLD0002'",
    )
    transform.dbt_build(url=fresh_db, vars=created_lookback_only)
    after_c = {r["balance_transaction_id"]: r["_classified_at"] for r in query(fresh_db, classified)}
    changed_bt = {k for k, v in after_c.items() if before_c[k] != v}
    bt_of_charge = query(
        fresh_db, "select balance_transaction_id from stripe_staging.charges where id = 'ch_GOLD0002'"
    )[0]
    # The charge's transaction, and its partial refund, which now takes back its share of the new tax.
    refund_bt = query(
        fresh_db, "select balance_transaction_id from stripe_staging.refunds where charge_id = 'ch_GOLD0002'"
    )
    assert changed_bt == {bt_of_charge["balance_transaction_id"], *(r["balance_transaction_id"] for r in refund_bt)}
    rebuilt = {r["entry_id"] for r in query(fresh_db, lines) if before_l.get(r["journal_line_id"]) != r["_loaded_at"]}
    bt_id = bt_of_charge["balance_transaction_id"]
    payout_id = query(
        fresh_db,
        "select payout_id from finance_intermediate.int_balance_transactions__classified "
        "where balance_transaction_id = %s",
        (bt_id,),
    )[0]["payout_id"]
    # its entries, its payout's
    assert rebuilt == {f"detail:{b}" for b in changed_bt} | {f"summary:{payout_id}", f"detail:{payout_id}"}
    # ... and the result equals a full refresh.
    state = "select journal_line_id, debit, credit, account_code from finance.fct_journal_lines order by 1"
    incremental = query(fresh_db, state)
    transform.dbt_build(url=fresh_db, full_refresh=True)
    assert query(fresh_db, state) == incremental
