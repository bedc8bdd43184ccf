"""Great Expectations suites and the blocking Dagster checks built on them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from transform_helpers import execute, golden, load_stripe_objects, query

from stripe_sage_pipeline.quality import run_suite


def test_suites_pass_on_golden_and_a_cent_off_names_the_entry(fresh_db: str, golden_marts) -> None:
    golden_marts.clone_into(fresh_db)
    for suite in ("staging", "journal_lines", "payout_reconciliation", "invoice_lines"):
        result = run_suite(suite, fresh_db)
        assert result.passed, (suite, result.stats)

    # One cent off on one line of the po_GOLD0001 summary entry.
    execute(
        fresh_db,
        "update finance.fct_journal_lines set debit = debit + 1 "
        "where entry_id = 'summary:po_GOLD0001' and account_code = '1010'",
    )
    result = run_suite("journal_lines", fresh_db)
    assert not result.passed
    assert result.failed_checks() == ["journal_lines_balance"]
    assert result.failing_rows_first_n[0]["entry_id"] == "summary:po_GOLD0001"
    assert result.failing_rows_first_n[0]["difference"] in (1, "1")

    # The same failure through Dagster (every row: the edit did not go through the pipeline, so the
    # rows written since the last pass do not include it): the check fails, names the entry, and --
    # since the loader refuses that entry's posting day itself -- warns instead of blocking every
    # other day's load.
    from stripe_sage_pipeline.defs.quality import SuiteScope, journal_lines_expectations
    from stripe_sage_pipeline.defs.resources import PostgresResource

    spec_by_name = {s.name: s for s in journal_lines_expectations.check_specs}
    assert not spec_by_name["journal_lines_balance"].blocking
    assert spec_by_name["journal_lines_posting_date_present"].blocking  # nothing downstream could hold that
    results = list(
        journal_lines_expectations(
            dg.build_asset_check_context(),
            config=SuiteScope(scope="all"),
            postgres=PostgresResource(database_url=fresh_db),
        )
    )
    balance = next(r for r in results if r.check_name == "journal_lines_balance")
    assert not balance.passed and balance.severity == dg.AssetCheckSeverity.WARN
    assert "posting day" in balance.metadata["holds"].value
    assert "summary:po_GOLD0001" in str(balance.metadata["failing_rows"].value)
    assert balance.metadata["rows_read"].value == "all rows"


def test_changed_scope_reads_what_was_written_since_the_last_pass(fresh_db: str, golden_marts) -> None:
    golden_marts.clone_into(fresh_db)
    first = run_suite("journal_lines", fresh_db, scope="changed")
    assert first.passed and set(first.stats["windows"].values()) == {"all rows"}  # nothing validated before
    lines = query(fresh_db, "select count(*) as n from finance.fct_journal_lines")[0]["n"]

    # Nothing written since: the window is empty, and an edit outside the pipeline is not in it.
    execute(
        fresh_db,
        "update finance.fct_journal_lines set debit = debit + 1 "
        "where entry_id = 'summary:po_GOLD0001' and account_code = '1010'",
    )
    quiet = run_suite("journal_lines", fresh_db, scope="changed")
    assert quiet.passed and all(w.startswith("> ") for w in quiet.stats["windows"].values())
    assert not run_suite("journal_lines", fresh_db, scope="all").passed  # every row: found

    # A rebuilt entry (new _loaded_at) that is a cent off is in the window: the check fails, names it,
    # and keeps failing on the next run (a failing check's mark does not move) until it is fixed.
    execute(fresh_db, "update finance.fct_journal_lines set _loaded_at = now() where entry_id = 'summary:po_GOLD0001'")
    for _ in range(2):
        res = run_suite("journal_lines", fresh_db, scope="changed")
        assert res.failed_checks() == ["journal_lines_balance"]
        assert [r["entry_id"] for r in res.failing_rows_first_n] == ["summary:po_GOLD0001"]
    execute(
        fresh_db,
        "update finance.fct_journal_lines set debit = debit - 1, _loaded_at = now() "
        "where entry_id = 'summary:po_GOLD0001' and account_code = '1010'",
    )
    fixed = run_suite("journal_lines", fresh_db, scope="changed")
    assert fixed.passed
    marks = {
        r["check_name"]: r["validated_through"] for r in query(fresh_db, "select * from finance_config.quality_state")
    }
    newest = query(fresh_db, "select max(_loaded_at) as t from finance.fct_journal_lines")[0]["t"]
    assert marks["journal_lines_balance"] == newest and marks["journal_lines_one_sided"] == newest
    assert lines == query(fresh_db, "select count(*) as n from finance.fct_journal_lines")[0]["n"]


def test_staging_suite_flags_net_not_amount_minus_fee(fresh_db: str, golden_path: Path) -> None:
    load_stripe_objects(fresh_db, golden(golden_path)["stripe"])
    execute(fresh_db, "update stripe_staging.balance_transactions set net = net - 1 where id = 'txn_GOLDc1'")
    result = run_suite("staging", fresh_db)
    assert result.failed_checks() == ["staging_net_equals_amount_minus_fee"]
    assert result.failing_rows_first_n[0]["id"] == "txn_GOLDc1"


def test_gx_is_imported_with_scipy_stats_deferred_until_first_use() -> None:
    """`quality.gx_import` leaves SciPy's statistics unexecuted (a fresh interpreter), and the first use loads them."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from stripe_sage_pipeline.quality.gx_import import gx\n"
        "stats = sys.modules['scipy.stats']\n"
        "print(type(stats).__name__, 'scipy.stats._stats_py' in sys.modules)\n"
        "from scipy import stats as bound\n"
        "print(bound is stats, round(float(stats.entropy([1, 1])), 6), type(stats).__name__)\n"
        "print(gx.expectations.ExpectColumnValuesToNotBeNull(column='id').column)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "_LazyModule False"  # bound, not executed
    assert out[1] == "True 0.693147 module"  # ln 2: executed in full at its first attribute access
    assert out[2] == "id"
