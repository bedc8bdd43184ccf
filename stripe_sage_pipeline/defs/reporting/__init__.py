"""Reporting stage: the month-end close pack, one monthly partition per calendar month (UTC).

The rules and the rendering live in `stripe_sage_pipeline.reporting`; this module wires them into
Dagster: `reporting/close_pack` reads the month from the marts, the posting ledger and Sage's GL
(read back), writes `<data dir>/close-packs/<YYYY-MM>/close_pack.html` with its PNG chart, and attaches
both paths and the tie-out to the materialization. `close_pack_job` materializes one month.
"""

import dagster as dg

from stripe_sage_pipeline.defs.resources import PostgresResource, SageResource
from stripe_sage_pipeline.money import to_decimal_str
from stripe_sage_pipeline.reporting import build_close_pack
from stripe_sage_pipeline.settings import load_settings
from stripe_sage_pipeline.transform.mapping import load_mapping

START_MONTH = load_settings().start_date[:7] + "-01"
# end_offset=1: the current month is a partition too (a close pack can be drafted before month end).
monthly_partitions = dg.MonthlyPartitionsDefinition(start_date=START_MONTH, timezone="UTC", end_offset=1)

CLOSE_PACK_KEY = dg.AssetKey(["reporting", "close_pack"])
UPSTREAM = [dg.AssetKey(["sage", "journal_entries"]), dg.AssetKey(["finance", "fct_payout_reconciliation"])]


def _markdown(pack) -> str:
    out = ["| currency | bank in Sage | Stripe paid out | bank ties | trial balance |", "|---|---:|---:|---|---:|"]
    for t in pack.tie_out:
        out.append(
            f"| {t.currency.upper()} | {to_decimal_str(t.sage_bank, t.currency)} | "
            f"{to_decimal_str(t.stripe_paid_out, t.currency)} | {'✓' if t.bank_ties else '✗'} | "
            f"{to_decimal_str(t.trial_balance, t.currency)} |"
        )
    return "\n".join(out)


@dg.asset(
    key=CLOSE_PACK_KEY,
    deps=UPSTREAM,
    partitions_def=monthly_partitions,
    group_name="reporting",
    kinds={"html", "sage", "postgres"},
    pool="sage_api",
)
def close_pack(
    context: dg.AssetExecutionContext, postgres: PostgresResource, sage: SageResource
) -> dg.MaterializeResult:
    """The month's close pack: payouts vs bank deposits per day (chart), reconciliation per payout, GL movement
    per account and currency read back from Sage, suspense items, dead letters, held entries and the tie-out."""
    month = context.partition_key[:7]
    client, _ = sage.client()
    try:
        pack, written = build_close_pack(postgres.url(), client, month, mapping=load_mapping())
    finally:
        client.close()
    summary = pack.summary()
    if not summary["ties_out"]:
        context.log.warning(f"close pack {month} does not tie out: see {written.html}")
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(str(written.html)),
            "chart": dg.MetadataValue.path(str(written.charts[0])),
            "tie_out": dg.MetadataValue.md(_markdown(pack)),
            "closes_clean": pack.ok,
            **{k: v for k, v in summary.items() if k != "month"},
        }
    )


close_pack_job = dg.define_asset_job(
    "close_pack_job",
    selection=[CLOSE_PACK_KEY],
    partitions_def=monthly_partitions,
    description="Write the close pack of one month (HTML report + chart, attached to the materialization).",
)

defs = dg.Definitions(assets=[close_pack], jobs=[close_pack_job])
