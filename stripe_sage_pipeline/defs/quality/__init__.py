"""Quality stage: Great Expectations suites run as blocking Dagster asset checks.

Each suite (stripe_sage_pipeline.quality) becomes one multi-asset check that reports one result
per property (`journal_lines_balance`, `staging_net_equals_amount_minus_fee`, ...), on the asset
of the table it reads; failing rows (first N, with ids) are in the check's metadata.
"""


from collections.abc import Iterator

import dagster as dg

from ...quality import Check, run_suite, suite_checks
from ..resources import PostgresResource


def _asset_key(check: Check) -> dg.AssetKey:
    return dg.AssetKey([check.schema, check.table])


def _suite_check(suite: str, description: str) -> dg.AssetChecksDefinition:
    checks = suite_checks(suite)

    @dg.multi_asset_check(
        name=f"{suite}_expectations",
        description=description,
        specs=[
            dg.AssetCheckSpec(name=c.name, asset=_asset_key(c), blocking=True, description=c.description or c.name)
            for c in checks
        ],
        can_subset=True,  # a job that selects one staging table runs only that table's checks
    )
    def _run(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> Iterator[dg.AssetCheckResult]:
        result = run_suite(suite, postgres.url())
        by_name = {c.name: c for c in checks}
        selected = context.selected_asset_check_keys
        for r in result.checks:
            c = by_name[r.name]
            if dg.AssetCheckKey(_asset_key(c), r.name) not in selected:
                continue
            yield dg.AssetCheckResult(
                asset_key=_asset_key(c),
                check_name=r.name,
                passed=r.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "unexpected_count": r.unexpected_count,
                    "failing_rows": dg.MetadataValue.json(r.failing_rows),
                    **({"error": r.error} if r.error else {}),
                },
            )

    return _run


staging_expectations = _suite_check("staging", "Great Expectations on the Stripe staging tables (blocking).")
journal_lines_expectations = _suite_check("journal_lines", "Every journal entry balances; lines one-sided; accounts in the chart.")
payout_reconciliation_expectations = _suite_check("payout_reconciliation", "Every complete automatic payout reconciles to zero.")
invoice_lines_expectations = _suite_check("invoice_lines", "Invoice totals equal lines plus tax.")

defs = dg.Definitions(
    asset_checks=[
        staging_expectations,
        journal_lines_expectations,
        payout_reconciliation_expectations,
        invoice_lines_expectations,
    ],
)
