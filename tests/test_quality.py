"""Great Expectations suites and the blocking Dagster checks built on them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from transform_helpers import execute, golden, load_stripe_objects

from stripe_sage_pipeline import transform
from stripe_sage_pipeline.quality import run_suite


def test_suites_pass_on_golden_and_a_cent_off_names_the_entry(fresh_db: str, golden_path: Path) -> None:
    load_stripe_objects(fresh_db, golden(golden_path)["stripe"])
    transform.dbt_build(url=fresh_db)
    for suite in ("staging", "journal_lines", "payout_reconciliation", "invoice_lines"):
        result = run_suite(suite, fresh_db)
        assert result.passed, (suite, result.stats)

    # One cent off on one line of the po_GOLD0001 summary entry.
    execute(fresh_db, "update finance.fct_journal_lines set debit = debit + 1 "
                      "where entry_id = 'summary:po_GOLD0001' and account_code = '1010'")
    result = run_suite("journal_lines", fresh_db)
    assert not result.passed
    assert result.failed_checks() == ["journal_lines_balance"]
    assert result.failing_rows_first_n[0]["entry_id"] == "summary:po_GOLD0001"
    assert result.failing_rows_first_n[0]["difference"] in (1, "1")

    # The same failure through Dagster: the blocking check fails and names the entry.
    from stripe_sage_pipeline.defs.quality import journal_lines_expectations
    from stripe_sage_pipeline.defs.resources import PostgresResource

    spec_by_name = {s.name: s for s in journal_lines_expectations.check_specs}
    assert spec_by_name["journal_lines_balance"].blocking
    results = list(journal_lines_expectations(dg.build_asset_check_context(), postgres=PostgresResource(database_url=fresh_db)))
    balance = next(r for r in results if r.check_name == "journal_lines_balance")
    assert not balance.passed
    assert "summary:po_GOLD0001" in str(balance.metadata["failing_rows"].value)


def test_staging_suite_flags_net_not_amount_minus_fee(fresh_db: str, golden_path: Path) -> None:
    load_stripe_objects(fresh_db, golden(golden_path)["stripe"])
    execute(fresh_db, "update stripe_staging.balance_transactions set net = net - 1 where id = 'txn_GOLDc1'")
    result = run_suite("staging", fresh_db)
    assert result.failed_checks() == ["staging_net_equals_amount_minus_fee"]
    assert result.failing_rows_first_n[0]["id"] == "txn_GOLDc1"
