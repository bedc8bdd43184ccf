"""Quality stage: Great Expectations suites run as blocking Dagster asset checks.

Each suite (stripe_sage_pipeline.quality) becomes one multi-asset check that reports one result
per property (`journal_lines_balance`, `staging_net_equals_amount_minus_fee`, ...), on the asset
of the table it reads; failing rows (first N, with ids) are in the check's metadata.

A check blocks (severity ERROR, `blocking=True`) only when nothing downstream could hold what it
found; the others fail as warnings with what they hold in their metadata (`holds`), and the loader
holds exactly that (a posting day, a payout's summary, an entry), so the rest posts.

By default a check reads the rows written since it last passed (`scope: changed`): an hourly run
validates its window, a full refresh everything it rebuilt. `scope: all` (run config, e.g. from the
launchpad) validates every row.
"""

from collections.abc import Iterator
from typing import Literal

import dagster as dg

from stripe_sage_pipeline.defs.resources import PostgresResource
from stripe_sage_pipeline.quality import Check, run_suite, suite_checks


class SuiteScope(dg.Config):
    """Which rows a suite reads: `changed` (since each check last passed) or `all`."""

    scope: Literal["changed", "all"] = "changed"


def _asset_key(check: Check) -> dg.AssetKey:
    return dg.AssetKey([check.schema, check.table])


def _suite_check(suite: str, description: str) -> dg.AssetChecksDefinition:
    checks = suite_checks(suite)

    @dg.multi_asset_check(
        name=f"{suite}_expectations",
        description=description,
        specs=[
            dg.AssetCheckSpec(
                name=c.name,
                asset=_asset_key(c),
                blocking=c.blocking,
                description=(c.description or c.name) + (f" Not blocking: holds {c.holds}." if c.holds else ""),
            )
            for c in checks
        ],
        can_subset=True,  # a job that selects one staging table runs only that table's checks
    )
    def _run(
        context: dg.AssetCheckExecutionContext, config: SuiteScope, postgres: PostgresResource
    ) -> Iterator[dg.AssetCheckResult]:
        """Run the selected checks of the suite; one result per check, failing rows in metadata."""
        selected = context.selected_asset_check_keys
        names = [c.name for c in checks if dg.AssetCheckKey(_asset_key(c), c.name) in selected]
        result = run_suite(suite, postgres.url(), scope=config.scope, checks=names)
        by_name = {c.name: c for c in checks}
        for r in result.checks:
            c = by_name[r.name]
            yield dg.AssetCheckResult(
                asset_key=_asset_key(c),
                check_name=r.name,
                passed=r.passed,
                severity=dg.AssetCheckSeverity.ERROR if c.blocking else dg.AssetCheckSeverity.WARN,
                metadata={
                    "blocking": c.blocking,
                    **({"holds": c.holds} if c.holds else {}),
                    "unexpected_count": r.unexpected_count,
                    "rows_read": result.stats["windows"][r.name],
                    "failing_rows": dg.MetadataValue.json(r.failing_rows),
                    **({"error": r.error} if r.error else {}),
                },
            )

    return _run


staging_expectations = _suite_check("staging", "Great Expectations on the Stripe staging tables.")
journal_lines_expectations = _suite_check(
    "journal_lines", "Every journal entry balances; lines one-sided; accounts in the chart."
)
payout_reconciliation_expectations = _suite_check(
    "payout_reconciliation", "Every complete automatic payout reconciles to zero."
)
invoice_lines_expectations = _suite_check("invoice_lines", "Invoice totals equal lines plus tax.")

defs = dg.Definitions(
    asset_checks=[
        staging_expectations,
        journal_lines_expectations,
        payout_reconciliation_expectations,
        invoice_lines_expectations,
    ],
)
