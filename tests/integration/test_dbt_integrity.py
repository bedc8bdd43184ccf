"""The dbt project's own guards: the cross-layer integrity test and the staging views' tests, shown to fail."""

from __future__ import annotations

from transform_helpers import execute, query

from stripe_sage_pipeline.transform import build as transform

TIE_OUT = "test.stripe_sage.assert_net_ties_out_across_layers"


def _test(url: str, select: str, **vars: str) -> transform.DbtResult:
    """`dbt test` of one test (or selection) on the database as it is."""
    return transform.dbt_build(
        url=url, command="test", select=select, vars=vars or None, prepare=False, raise_on_failure=False
    )


def _tie_out(url: str, **vars: str) -> str:
    """The cross-layer test's status on the database as it is (hourly scope unless test_scope is given)."""
    return _test(url, "assert_net_ties_out_across_layers", **vars).statuses[TIE_OUT]


def test_net_ties_out_from_staging_to_the_clearing_account_and_a_cent_off_fails(fresh_db, golden_marts) -> None:
    golden_marts.clone_into(fresh_db)
    # An hourly run checks the transactions it classified last (here: txn_GOLDc1 alone) ...
    for table, kept in (
        ("finance_intermediate.int_balance_transactions__classified", "balance_transaction_id <> 'txn_GOLDc1'"),
        ("finance.fct_journal_lines", "entry_id <> 'detail:txn_GOLDc1'"),
    ):
        execute(fresh_db, f"update {table} set _classified_at = _classified_at - interval '1 hour' where {kept}")
    assert _tie_out(fresh_db) == "pass"
    # ... so a cent off on the clearing line of another transaction is not in its scope,
    off_by_one = "update finance.fct_journal_lines set debit = debit {} 1 where entry_id = %s and account_code = '1150'"
    execute(fresh_db, off_by_one.format("+"), ("detail:txn_GOLDc2",))
    assert _tie_out(fresh_db) == "pass"
    # but one on txn_GOLDc1's is.
    execute(fresh_db, off_by_one.format("+"), ("detail:txn_GOLDc1",))
    assert _tie_out(fresh_db) == "fail"
    execute(fresh_db, off_by_one.format("-"), ("detail:txn_GOLDc1",))

    # Every row is read with test_scope all (as on a full refresh and whenever the staging views are built).
    everything = _test(fresh_db, "assert_net_ties_out_across_layers", test_scope="all")
    assert everything.statuses[TIE_OUT] == "fail" and "Got 1 result" in everything.failures[TIE_OUT]
    execute(fresh_db, off_by_one.format("-"), ("detail:txn_GOLDc2",))
    assert _tie_out(fresh_db, test_scope="all") == "pass"

    # A staged transaction the classification lost: the counts and the nets differ.
    execute(
        fresh_db,
        "delete from finance_intermediate.int_balance_transactions__classified"
        " where balance_transaction_id = 'txn_GOLDr1'",
    )
    assert _tie_out(fresh_db, test_scope="all") == "fail"


def test_staging_views_are_tested_for_grain_required_columns_and_currency(fresh_db, golden_marts) -> None:
    golden_marts.clone_into(fresh_db)
    views = "path:models/staging"
    clean = {
        uid.split(".")[2]: status for uid, status in _test(fresh_db, views).statuses.items() if uid.startswith("test.")
    }
    assert clean and set(clean.values()) == {"pass"}
    # Every staging model has tests.
    _, names = transform.staging_views()
    tested = set(clean)
    assert all(any(name in t for t in tested) for name in names), (names, tested)

    # A duplicated refund (the view's grain), a currency that is not an ISO code, a dispute without its charge.
    execute(fresh_db, "alter table stripe_staging.refunds drop constraint refunds_pkey")
    execute(fresh_db, "insert into stripe_staging.refunds select * from stripe_staging.refunds")
    execute(fresh_db, "update stripe_staging.payouts set currency = 'US$' where id = 'po_GOLD0000'")
    execute(fresh_db, "alter table stripe_staging.disputes alter column charge_id drop not null")
    execute(fresh_db, "update stripe_staging.disputes set charge_id = null")
    broken = _test(fresh_db, views)
    failed = {uid.split(".")[2] for uid, status in broken.statuses.items() if status == "fail"}
    assert failed == {
        "unique_key_stg_stripe__refunds_stripe_account__refund_id",
        "currency_code_stg_stripe__payouts_currency",
        "not_null_stg_stripe__disputes_charge_id",
    }, broken.statuses
    assert query(fresh_db, "select count(*) as n from finance_staging.stg_stripe__refunds")[0]["n"] == 2
