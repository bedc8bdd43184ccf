"""Extraction assets: Stripe objects into `stripe_staging`, by hourly `created` partitions and by events."""

import time
from datetime import UTC

import dagster as dg

from stripe_sage_pipeline.defs.resources import PostgresResource, StripeResource
from stripe_sage_pipeline.extract.extract import (
    ensure_events_cursor,
    extract_window,
    extract_windows,
    raise_if_rejected,
    sync_events,
)
from stripe_sage_pipeline.extract.tables import SCHEMA, TABLES
from stripe_sage_pipeline.settings import load_settings

START_DATE = load_settings().start_date

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=START_DATE, timezone="UTC")

STRIPE_POOL = "stripe_api"  # one concurrency pool keeps concurrent runs under Stripe's rate limit


def staging_key(table: str) -> dg.AssetKey:
    """Asset key of a staging table: mirrors Postgres `stripe_staging/<table>`."""
    return dg.AssetKey([SCHEMA, table])


def _window(context: dg.AssetExecutionContext) -> tuple[int, int]:
    tw = context.partition_time_window
    return int(tw.start.timestamp()), int(tw.end.timestamp())


def _count_table(conninfo: str, table: str) -> int:
    import psycopg

    with psycopg.connect(conninfo) as conn:
        return conn.execute(f"select count(*) from {SCHEMA}.{table}").fetchone()[0]


def _ensure_schema(conninfo: str) -> None:
    import psycopg

    from stripe_sage_pipeline.extract.staging import ensure_schema

    with psycopg.connect(conninfo) as conn:
        ensure_schema(conn)


def _extract(context: dg.AssetExecutionContext, postgres: PostgresResource, stripe: StripeResource, table: str) -> dict:
    url = postgres.conninfo()
    _ensure_schema(url)
    reader = stripe.reader()
    ensure_events_cursor(reader, url)
    start, end = _window(context)
    t0 = time.monotonic()
    res = extract_window(reader, url, table, start, end, workers=stripe.extract_workers)
    elapsed = time.monotonic() - t0
    context.log.info(f"{table}: {res.rows} rows over {res.hours} hour(s) in {elapsed:.1f}s")
    raise_if_rejected(res.rejected)
    return {
        "rows_in_window": res.rows,
        "hours": res.hours,
        "table_rows": _count_table(url, table),
        "payout_members": res.payout_members,
        "requests": reader.stats.requests,
        "retries": reader.stats.retries,
        "seconds": round(elapsed, 2),
    }


def _staging_asset(table: str) -> dg.AssetsDefinition:
    spec = TABLES[table]

    @dg.asset(
        key=staging_key(table),
        partitions_def=hourly_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name="ingestion",
        kinds={"stripe", "postgres"},
        pool=STRIPE_POOL,
        description=f"Stripe {spec.object_type}s created in the partition's hour(s), upserted by id into "
        f"{SCHEMA}.{table} (typed columns + raw JSON).",
    )
    def _asset(
        context: dg.AssetExecutionContext, postgres: PostgresResource, stripe: StripeResource
    ) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=_extract(context, postgres, stripe, table))

    return _asset


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            staging_key("payouts"),
            group_name="ingestion",
            kinds={"stripe", "postgres"},
            description="Stripe payouts created in the partition's hour(s), upserted by id.",
        ),
        dg.AssetSpec(
            staging_key("payout_balance_transactions"),
            group_name="ingestion",
            kinds={"stripe", "postgres"},
            description="Which balance transactions each automatic payout swept (GET ?payout=po_…).",
        ),
    ],
    partitions_def=hourly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=STRIPE_POOL,
)
def payouts(context: dg.AssetExecutionContext, postgres: PostgresResource, stripe: StripeResource):
    """Payouts and their balance-transaction membership, extracted together in one transaction per hour."""
    meta = _extract(context, postgres, stripe, "payouts")
    yield dg.MaterializeResult(asset_key=staging_key("payouts"), metadata=meta)
    yield dg.MaterializeResult(
        asset_key=staging_key("payout_balance_transactions"),
        metadata={
            "members_in_window": meta["payout_members"],
            "table_rows": _count_table(postgres.conninfo(), "payout_balance_transactions"),
        },
    )


@dg.asset(
    key=staging_key("events"),
    group_name="ingestion",
    kinds={"stripe", "postgres"},
    pool=STRIPE_POOL,
    deps=[staging_key(t) for t in ("charges", "refunds", "disputes", "payouts", "customers", "invoices")],
)
def stripe_events(context: dg.AssetExecutionContext, postgres: PostgresResource, stripe: StripeResource):
    """The update path: new Stripe events since the cursor (with a look-back); changed objects re-fetched into staging."""
    url = postgres.conninfo()
    _ensure_schema(url)
    res = sync_events(stripe.reader(), url)
    context.log.info(f"update path: {res.events_new} new events, re-fetched {res.objects_refetched}")
    # The update path writes staging too: its rows pass the same checks before anything downstream reads them.
    evaluations, failed = run_staging_checks(postgres, {t for t, n in res.objects_refetched.items() if n})
    yield from evaluations
    if failed:
        raise dg.Failure(description=staging_failure_text(failed, []))
    yield dg.MaterializeResult(
        metadata={
            "events_listed": res.events_listed,
            "events_new": res.events_new,
            "objects_refetched": dg.MetadataValue.json(res.objects_refetched),
            "fallback_relist": res.fallback_relist,
            "cursor_to": res.cursor_to or 0,
        }
    )


PARTITIONED_TABLES = ["customers", "charges", "refunds", "disputes", "balance_transactions", "invoices"]

staging_assets = [_staging_asset(t) for t in PARTITIONED_TABLES] + [payouts]

extract_job = dg.define_asset_job(
    "extract_job",
    selection=dg.AssetSelection.assets(*staging_assets),
    partitions_def=hourly_partitions,
    description="Extract Stripe objects created in the selected hours into stripe_staging.",
)

update_path_job = dg.define_asset_job(
    "update_path_job",
    selection=dg.AssetSelection.assets(stripe_events),
    description="Re-fetch Stripe objects that changed after creation (Events API).",
)


class HistoryConfig(dg.Config):
    """The window of a history load: UTC hour keys like the partitions' (`2026-07-01-00:00`), end inclusive."""

    start: str
    end: str
    tables: list[str] = []


def run_staging_checks(
    postgres: PostgresResource, tables: set[str] | None = None
) -> tuple[list[dg.AssetCheckEvaluation], list[str]]:
    """Run the staging Great Expectations checks (rows changed since each last passed) of `tables` (all when
    None): each check's evaluation on its staging asset (for the step to yield), and the failures as text."""
    from stripe_sage_pipeline.quality import run_suite, suite_checks

    checks = [c for c in suite_checks("staging") if tables is None or c.table in tables]
    if not checks:
        return [], []
    result = run_suite("staging", postgres.url(), scope="changed", checks=[c.name for c in checks])
    by_name = {c.name: c for c in checks}
    evaluations, failed = [], []
    for r in result.checks:
        c = by_name[r.name]
        evaluations.append(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey([c.schema, c.table]),
                check_name=r.name,
                passed=r.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                blocking=False,  # the step blocks itself, with every reason
                metadata={
                    "unexpected_count": r.unexpected_count,
                    "rows_read": result.stats["windows"][r.name],
                    "failing_rows": dg.MetadataValue.json(r.failing_rows),
                    **({"error": r.error} if r.error else {}),
                },
            )
        )
        if not r.passed:
            failed.append(
                f"{r.name} on {c.schema}.{c.table}: {r.error or f'{r.unexpected_count} row(s)'}"
                + (f", e.g. {r.failing_rows[:3]}" if r.failing_rows else "")
            )
    return evaluations, failed


def staging_failure_text(failed_checks: list[str], rejected: list[str]) -> str:
    """Why a run that wrote staging fails: every failed staging check and every malformed object."""
    parts = []
    if rejected:
        parts.append(
            f"{len(rejected)} extraction problem(s); each malformed object is kept in"
            f" {SCHEMA}._rejected_objects (its hour committed nothing, every other hour and table was"
            " extracted):\n  " + "\n  ".join(rejected[:50])
        )
    if failed_checks:
        parts.append(
            f"{len(failed_checks)} staging check(s) failed (nothing downstream should read these rows):\n  "
            + "\n  ".join(failed_checks)
        )
    return "\n".join(parts)


@dg.op(pool=STRIPE_POOL, out=dg.Out(list))
def extract_history(
    context: dg.OpExecutionContext, config: HistoryConfig, postgres: PostgresResource, stripe: StripeResource
) -> list:
    """Extract every Stripe object created in a long window in one step, committed hour by hour.

    A malformed object fails only its table's hour: every other hour and table goes on, and the objects
    are returned (named) for `check_staging_history`, which fails the run at the end."""
    from datetime import datetime

    def ts(key: str) -> int:
        return int(datetime.strptime(key, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC).timestamp())

    url = postgres.conninfo()
    _ensure_schema(url)
    reader = stripe.reader()
    ensure_events_cursor(reader, url)
    start, end = ts(config.start), ts(config.end) + 3600
    tables = config.tables or [*PARTITIONED_TABLES, "payouts"]
    # All tables at once: one pool of in-flight requests sized from the rate limit and Stripe's latency.
    done = extract_windows(reader, url, tables, start, end, workers=stripe.extract_workers)
    context.log.info(f"{reader.stats.requests} requests, {done.in_flight} in flight, chunks {done.chunks}")
    # A table that failed outright (not a malformed object: those fail only their hour) is named at the end too.
    rejected: list[str] = [
        f"{table}: the whole table failed: {type(err).__name__}: {err}" for table, err in done.errors.items()
    ]
    for table in tables:
        if table not in done.results:
            continue
        res = done.results[table]
        context.log.info(f"{table}: {res.rows} rows" + (f", {len(res.rejected)} malformed" if res.rejected else ""))
        for problem in res.rejected:
            context.log.error(problem)
        rejected += res.rejected
        keys = [staging_key(table)] + ([staging_key("payout_balance_transactions")] if table == "payouts" else [])
        for key in keys:
            context.log_event(
                dg.AssetObservation(
                    asset_key=key,
                    metadata={
                        "history_window": f"{config.start} .. {config.end}",
                        "rows_in_window": res.payout_members
                        if key.path[-1] == "payout_balance_transactions"
                        else res.rows,
                        "table_rows": _count_table(url, key.path[-1]),
                        "malformed_objects": dg.MetadataValue.json(res.rejected[:50]),
                    },
                )
            )
    return rejected


@dg.op(out={})
def check_staging_history(context: dg.OpExecutionContext, rejected: list, postgres: PostgresResource):
    """The staging Great Expectations checks on what the history load wrote (the hourly path runs them as
    asset checks); fails the run naming every malformed object and every failed check."""
    evaluations, failed = run_staging_checks(postgres)
    yield from evaluations
    if failed or rejected:
        raise dg.Failure(
            description=staging_failure_text(failed, rejected),
            metadata={
                "malformed_objects": dg.MetadataValue.json(rejected[:200]),
                "failed_checks": dg.MetadataValue.json(failed),
            },
        )


@dg.job(description="First load or catch-up of a long window in one run (the hourly partitions cover what follows).")
def stripe_history_job() -> None:
    """First load or catch-up of a long window in one run (the hourly partitions cover what follows).

    A single-run backfill of the hourly assets does the same work but records every hour of every table
    as a partition in Dagster's event log; for months of history that bookkeeping costs more than the
    extraction itself, so the first load goes through this job. The staging checks run at its end, as
    they do after every other path that writes staging; a malformed object fails only its table's hour,
    and the run fails at the end naming each one.
    """
    check_staging_history(extract_history())


defs = dg.Definitions(assets=[*staging_assets, stripe_events], jobs=[extract_job, update_path_job, stripe_history_job])
