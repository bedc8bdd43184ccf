"""Load stage: the finance marts posted to Sage Pro in daily partitions (UTC posting date).

The posting logic lives in `stripe_sage_pipeline.load` (plain modules); this module only wires it
into Dagster: partitioned load assets under `sage/…` downstream of the finance marts, a `load_job`
that finance backfills a month with (one run for the whole range: each step posts the days in date
order, each day exactly as a one-day run posts it; a refused day posts nothing and fails the run at the
end, after every other day), the dead-letter re-drive, and the Sage → Stripe customer sync with its
schedule. Every Sage call runs in the `sage_api` pool, so concurrent runs stay under Sage's rate limit
together.
"""

import contextlib
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import dagster as dg

from stripe_sage_pipeline.automation.attention import Attention, held_items, raise_attention_alerts, suspense_lines
from stripe_sage_pipeline.defs.resources import PostgresResource, SageResource, StripeResource
from stripe_sage_pipeline.load import customers as customer_sync
from stripe_sage_pipeline.load.days import (
    DaysOutcome,
    day_figures,
    load_days,
    refusal_details,
    refusal_text,
    sage_down,
    total_stats,
)
from stripe_sage_pipeline.load.engine import LoadStats, PartitionBlocked, Poster
from stripe_sage_pipeline.load.ledger import SCHEMA
from stripe_sage_pipeline.load.loaders import (
    check_invoices,
    load_cash_receipts,
    load_invoices,
    load_journal_entries,
    plan_partition_entries,
    plan_partition_receipts,
)
from stripe_sage_pipeline.load.redrive import redrive
from stripe_sage_pipeline.sage.client import SageClient
from stripe_sage_pipeline.sage.errors import CredentialsError, SageUnavailable
from stripe_sage_pipeline.settings import load_settings
from stripe_sage_pipeline.transform.mapping import Mapping
from stripe_sage_pipeline.transform.marts import MARTS_RUN_TAG, built_mapping, marts_lock

SAGE_POOL = "sage_api"
START_DATE = load_settings().start_date[:10]

# end_offset=1: today's partition exists, so a payout arriving today can post today.
daily_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC", end_offset=1)

FINANCE = {
    name: dg.AssetKey(["finance", name])
    for name in ("fct_journal_lines", "fct_invoice_lines", "fct_payout_reconciliation", "dim_customers")
}
CUSTOMERS_KEY = dg.AssetKey(["sage", "customers"])
INVOICES_KEY = dg.AssetKey(["sage", "invoices"])
RECEIPTS_KEY = dg.AssetKey(["sage", "cash_receipts"])
JOURNAL_KEY = dg.AssetKey(["sage", "journal_entries"])
RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)


def _days(context: dg.AssetExecutionContext) -> list[date]:
    """The run's posting dates in date order: one for a scheduled or sensor run, the range for a backfill."""
    return sorted(date.fromisoformat(key) for key in context.partition_keys)


def _metadata(stats: LoadStats, **extra: object) -> dict:
    return {
        "planned": stats.planned,
        "posted": stats.posted,
        "created": stats.created,
        "replayed": stats.replayed,
        "already_exists": stats.already_exists,
        "unchanged": stats.unchanged,
        "dead_lettered": stats.dead_lettered,
        "dead_letters_waiting": stats.dead_letters_waiting,
        "held": stats.held,
        "reversed": stats.reversed,
        "corrected": stats.corrected,
        "requests_used": stats.requests,
        "dead_letters_table": f"{SCHEMA}.dead_letters",
        **extra,
    }


def _warn_dead_letters(context: dg.AssetExecutionContext, stats: LoadStats) -> None:
    if stats.dead_lettered:
        context.log.warning(
            f"{stats.dead_lettered} item(s) dead-lettered: see {SCHEMA}.dead_letters, fix, then run"
            " redrive_dead_letters_job (or `stripe-sage redrive`)"
        )


def _transient_text(stats: LoadStats) -> str:
    return (
        f"{stats.transient_failures} item(s) could not reach Sage after retries; they stay computed"
        " and are resent with the same idempotency key on the next attempt"
    )


def _result(context: dg.AssetExecutionContext, stats: LoadStats, **extra: object) -> dg.MaterializeResult:
    """Asset metadata from the counts; a run whose retries ran out fails (the items stay `computed`)."""
    meta = _metadata(stats, **extra)
    _warn_dead_letters(context, stats)
    if stats.transient_failures:
        raise dg.Failure(
            description=_transient_text(stats),
            metadata={**meta, "errors": dg.MetadataValue.json(stats.errors[:20])},
        )
    return dg.MaterializeResult(metadata=meta)


def _refused(err: Exception) -> dg.Failure:
    """A refused day of a one-day run: the run fails without retries (the marts must change first)."""
    return dg.Failure(description=str(err), allow_retries=False)


def _posted(
    context: dg.AssetExecutionContext,
    outcome: DaysOutcome[LoadStats],
    refused: Callable[[Exception], dg.Failure] = _refused,
    per_day: Callable[[date, LoadStats], dict] | None = None,
    fail_on_refused: bool = True,
    **run_meta: object,
) -> dg.MaterializeResult:
    """The step's result. One day: exactly a one-day run's result or failure. Several days (a single-run
    backfill): each partition's materialization carries its own day's figures, the result a day → posted /
    held / dead-lettered table; refused days (or items Sage never answered) fail the step at the end, after
    every other day was posted, naming each refused day and why. A step before the last one passes
    `fail_on_refused=False`: a failed step would make Dagster skip the later steps for every day of the
    range, so it lists its refused days in its metadata and the later steps refuse those days too (the
    journal step, the last, fails naming them)."""
    days = outcome.days
    if len(days) == 1:
        (day,) = days
        if day in outcome.refused:
            err = outcome.refused[day]
            raise refused(err) from err
        stats = outcome.done[day]
        return _result(context, stats, **run_meta, **(per_day(day, stats) if per_day else {}))
    for day, stats in outcome.done.items():
        day_meta = _metadata(stats, **run_meta, **(per_day(day, stats) if per_day else {}))
        context.add_asset_metadata(day_meta, partition_key=day.isoformat())
    total = total_stats(list(outcome.done.values()))
    _warn_dead_letters(context, total)
    figures = dg.MetadataValue.json(day_figures(outcome.done))
    problems = []
    for err in outcome.refused.values():
        context.log.error(str(err))
    if outcome.refused and fail_on_refused:
        problems.append(refusal_text(outcome.refused, len(days)))
    if total.transient_failures:
        problems.append(_transient_text(total))
    if problems:
        raise dg.Failure(
            description="\n".join(problems),
            metadata={
                "days": figures,
                "refused_days": dg.MetadataValue.json(refusal_details(outcome.refused)),
                "errors": dg.MetadataValue.json(total.errors[:20]),
            },
            # A refused day needs a change to the marts or the mapping first: retrying cannot post it.
            allow_retries=not outcome.refused,
        )
    return dg.MaterializeResult(
        metadata={
            **_metadata(total, **run_meta),
            **({"refused_days": dg.MetadataValue.json(refusal_details(outcome.refused))} if outcome.refused else {}),
            "days": figures,
            "first_day": days[0].isoformat(),
            "last_day": days[-1].isoformat(),
        }
    )


@contextlib.contextmanager
def _credentials_stop_the_run(client: SageClient | Any = None) -> Iterator[None]:
    """401/403 or Sage down: fail the run at once, without step retries (retrying cannot fix a password, and
    a Sage that does not answer would hold the pool slot for minutes); the failure alerts with the cause."""
    try:
        yield
    except CredentialsError as err:
        raise dg.Failure(description=f"Sage credentials: {err}", allow_retries=False) from err
    except SageUnavailable as err:
        raise dg.Failure(description=str(err), allow_retries=False) from err
    # Items failed one by one against an open breaker (each stays computed): the run stops here.
    # SageClient and IntacctTarget have a breaker (sage.client.CircuitBreaker); a target without one never stops.
    down = sage_down(client)()
    if down is not None:
        raise dg.Failure(description=str(down), allow_retries=False)


def _attention(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    day: date,
    items: list,
    suspense_account: str | None = None,
) -> dict:
    """Suspense postings and held items of the day: an alert each (once per distinct set), and metadata."""
    import psycopg

    att = Attention(day, held=held_items(items))
    if suspense_account:
        with psycopg.connect(postgres.conninfo()) as conn:
            att.suspense = suspense_lines(conn, day, suspense_account)
    raise_attention_alerts(postgres.conninfo(), att, run_id=context.run_id, job_name=context.job_name)
    if att.suspense:
        context.log.warning(f"{len(att.suspense)} line(s) of {day} booked to suspense account {suspense_account}")
    if att.held:
        context.log.warning(
            f"{len(att.held)} item(s) of {day} held back: "
            + ", ".join(f"{h['external_ref']} ({h['reason']})" for h in att.held[:10])
        )
    meta = att.metadata()
    return {k: dg.MetadataValue.json(v) if isinstance(v, list) else v for k, v in meta.items()}


def _planned(postgres: PostgresResource, plan, day: date, mapping) -> list:
    import psycopg

    with psycopg.connect(postgres.conninfo()) as conn:
        return plan(conn, day, mapping)


def marts_mapping(url: str) -> Mapping:
    """The mapping the marts were built with: the one source of truth for the posting and revenue modes."""
    mapping = built_mapping(url)
    if mapping is None:
        raise dg.Failure(
            description="the finance marts have no complete build recorded: run transform_job first",
            allow_retries=False,
        )
    return mapping


@contextlib.contextmanager
def reading_marts(context: dg.AssetExecutionContext | dg.OpExecutionContext, url: str) -> Iterator[Mapping]:
    """Hold the marts lock shared (no build rewrites them meanwhile) and give the mapping they were built with."""
    with marts_lock(url, exclusive=False, on_wait=context.log.info):
        yield marts_mapping(url)


def _poster(postgres: PostgresResource, sage: SageResource) -> Poster:
    client, counter = sage.client()
    return Poster(postgres.url(), client, workers=sage.max_concurrency, transport=counter)


# A backfill posts its whole range in one run (one process start-up, one marts lock, one pool slot), day by
# day in date order inside each step; a scheduled or sensor run still posts its one day.
ONE_RUN = dg.BackfillPolicy.single_run()


@dg.asset(
    key=CUSTOMERS_KEY,
    deps=[FINANCE["dim_customers"]],
    partitions_def=daily_partitions,
    backfill_policy=ONE_RUN,
    group_name="sage",
    kinds={"sage", "postgres"},
    pool=SAGE_POOL,
    retry_policy=RETRY,
)
def sage_customers(
    context: dg.AssetExecutionContext, postgres: PostgresResource, sage: SageResource
) -> dg.MaterializeResult:
    """Sage customers for every Stripe customer created up to the partition's day (a range: its last day):
    created, or updated (Stripe-owned fields)."""
    days = _days(context)
    client, counter = sage.client()
    try:
        # Which fields Sage owns (mapping: customer_sync) shapes no mart: it is read from mapping.yaml.
        with _credentials_stop_the_run(client), marts_lock(postgres.url(), exclusive=False, on_wait=context.log.info):
            stats = customer_sync.push_customers(postgres.url(), client, up_to=days[-1], transport=counter)
    finally:
        client.close()
    return _result(context, stats, **({"up_to": days[-1].isoformat()} if len(days) > 1 else {}))


@dg.asset(
    key=INVOICES_KEY,
    deps=[FINANCE["fct_invoice_lines"], CUSTOMERS_KEY],
    partitions_def=daily_partitions,
    backfill_policy=ONE_RUN,
    group_name="sage",
    kinds={"sage", "postgres"},
    pool=SAGE_POOL,
    retry_policy=RETRY,
)
def sage_invoices(
    context: dg.AssetExecutionContext, postgres: PostgresResource, sage: SageResource
) -> dg.MaterializeResult:
    """Sage invoices, one per charge of the day (invoice-driven revenue only; nothing in direct mode)."""
    poster = _poster(postgres, sage)
    url = postgres.url()
    try:
        with _credentials_stop_the_run(poster.client), reading_marts(context, url) as mapping:
            outcome = load_days(
                _days(context), lambda day: load_invoices(url, poster, day, mapping), stop=sage_down(poster.client)
            )
    finally:
        poster.close()
    return _posted(context, outcome, fail_on_refused=False, revenue_mode=mapping.revenue_mode)


def _after_invoices(
    url: str, mapping, days: list[date], load: Callable[[date], LoadStats]
) -> Callable[[date], LoadStats]:
    """`load` for one day of a range run, refusing the days whose invoices were refused (a one-day run never
    gets here for such a day: its invoice step failed)."""
    if len(days) == 1:
        return load

    def load_day(day: date) -> LoadStats:
        check_invoices(url, day, mapping)
        return load(day)

    return load_day


@dg.asset(
    key=RECEIPTS_KEY,
    deps=[FINANCE["fct_journal_lines"], INVOICES_KEY],
    partitions_def=daily_partitions,
    backfill_policy=ONE_RUN,
    group_name="sage",
    kinds={"sage", "postgres"},
    pool=SAGE_POOL,
    retry_policy=RETRY,
)
def sage_cash_receipts(
    context: dg.AssetExecutionContext, postgres: PostgresResource, sage: SageResource
) -> dg.MaterializeResult:
    """Sage cash receipts settling the day's charge invoices (invoice-driven revenue only)."""
    poster = _poster(postgres, sage)
    url = postgres.url()
    try:
        with _credentials_stop_the_run(poster.client), reading_marts(context, url) as mapping:
            days = _days(context)
            outcome = load_days(
                days,
                _after_invoices(url, mapping, days, lambda day: load_cash_receipts(url, poster, day, mapping)),
                stop=sage_down(poster.client),
            )
    finally:
        poster.close()

    def attention(day: date, stats: LoadStats) -> dict:
        if not stats.held:
            return {}
        return _attention(context, postgres, day, _planned(postgres, plan_partition_receipts, day, mapping))

    return _posted(context, outcome, per_day=attention, fail_on_refused=False, revenue_mode=mapping.revenue_mode)


def _journal_refused(context: dg.AssetExecutionContext) -> Callable[[Exception], dg.Failure]:
    def refused(err: Exception) -> dg.Failure:
        if not isinstance(err, PartitionBlocked):
            return _refused(err)
        # The asset itself refuses a partition whose lines break the invariants, whatever ran before.
        context.log.error(str(err))
        return dg.Failure(
            description=f"Nothing posted for {err.day}: its journal lines break the pre-post invariants",
            metadata={"problems": dg.MetadataValue.json(err.problems)},
            allow_retries=False,
        )

    return refused


@dg.asset(
    key=JOURNAL_KEY,
    deps=[FINANCE["fct_journal_lines"], FINANCE["fct_payout_reconciliation"], RECEIPTS_KEY],
    partitions_def=daily_partitions,
    backfill_policy=ONE_RUN,
    group_name="sage",
    kinds={"sage", "postgres"},
    pool=SAGE_POOL,
    retry_policy=RETRY,
)
def sage_journal_entries(
    context: dg.AssetExecutionContext, postgres: PostgresResource, sage: SageResource
) -> dg.MaterializeResult:
    """Journal entries of the day in the mapping's posting mode; changed entries reversed and re-posted."""
    poster = _poster(postgres, sage)
    url = postgres.url()
    try:
        with _credentials_stop_the_run(poster.client), reading_marts(context, url) as mapping:
            days = _days(context)
            outcome = load_days(
                days,
                _after_invoices(url, mapping, days, lambda day: load_journal_entries(url, poster, day, mapping)),
                stop=sage_down(poster.client),
            )
    finally:
        poster.close()

    def attention(day: date, stats: LoadStats) -> dict:
        items = _planned(postgres, plan_partition_entries, day, mapping) if stats.held else []
        return _attention(context, postgres, day, items, mapping.accounts.suspense)

    return _posted(
        context, outcome, refused=_journal_refused(context), per_day=attention, posting_mode=mapping.posting_mode
    )


DEAD_LETTERS_KEY = dg.AssetKey(["sage", "dead_letters"])
dead_letters_spec = dg.AssetSpec(
    DEAD_LETTERS_KEY,
    description=f"Items Sage rejected, with record, field and reason: the view {SCHEMA}.dead_letters (materialized"
    " by redrive_dead_letters_job).",
    deps=[CUSTOMERS_KEY, INVOICES_KEY, RECEIPTS_KEY, JOURNAL_KEY],
    group_name="sage",
    kinds={"postgres"},
)

LOAD_ASSETS = [sage_customers, sage_invoices, sage_cash_receipts, sage_journal_entries]

load_job = dg.define_asset_job(
    "load_job",
    selection=dg.AssetSelection.assets(CUSTOMERS_KEY, INVOICES_KEY, RECEIPTS_KEY, JOURNAL_KEY),
    tags=MARTS_RUN_TAG,
    description="Post one posting date to Sage Pro (customers, invoices, receipts, journal entries); a backfill"
    " of a month from the UI posts it in one run, day by day in date order (a refused day fails the run at the"
    " end, after every other day is posted).",
)


class RedriveConfig(dg.Config):
    """Which dead letters to re-drive (default: all)."""

    resources: list[str] = []
    refs: list[str] = []


@dg.op(pool=SAGE_POOL)
def redrive_dead_letters(
    context: dg.OpExecutionContext, config: RedriveConfig, postgres: PostgresResource, sage: SageResource
) -> None:
    """Re-plan every dead letter from the current marts and post it once (after the fix)."""
    client, counter = sage.client()
    poster = Poster(postgres.url(), client, workers=sage.max_concurrency, transport=counter)
    try:
        with reading_marts(context, postgres.url()) as mapping:
            res = redrive(
                postgres.url(),
                client,
                mapping=mapping,
                resources=config.resources or None,
                refs=config.refs or None,
                poster=poster,
            )
    finally:
        poster.close()
        client.close()
    for item in res.items:
        context.log.info(
            f"{item['resource']} {item['external_ref']}: was {item['reason_was']}, now {item['status_now']}"
            + (f" ({item['reason_now']})" if item["reason_now"] else "")
        )
    context.log.info(
        f"re-drove {len(res.items)}: {res.posted} posted, {res.still_dead} still dead-lettered,"
        f" {counter.count} requests"
    )
    context.log_event(
        dg.AssetMaterialization(
            asset_key=DEAD_LETTERS_KEY,
            description="Dead letters after a re-drive",
            metadata={
                "redriven": len(res.items),
                "posted": res.posted,
                "still_dead": res.still_dead,
                "requests_used": counter.count,
                "items": dg.MetadataValue.json(res.items),
            },
        )
    )


@dg.job(
    description="Re-drive the dead letters in sage_sync.dead_letters after a fix (each posts once).", tags=MARTS_RUN_TAG
)
def redrive_dead_letters_job() -> None:
    """Re-drive the dead letters in sage_sync.dead_letters after a fix (each posts once)."""
    redrive_dead_letters()


@dg.op(pool=SAGE_POOL)
def sync_sage_customers_to_stripe(
    context: dg.OpExecutionContext, postgres: PostgresResource, sage: SageResource, stripe: StripeResource
) -> None:
    """Copy Sage-side edits of the fields Sage owns (mapping: customer_sync) to the Stripe customers."""
    client, counter = sage.client()
    try:
        sdk = customer_sync.stripe_client(stripe.api_key, stripe.api_base, stripe.stripe_account)
        res = customer_sync.pull_sage_changes(postgres.url(), client, sdk)
    finally:
        client.close()
    context.log.info(
        f"Sage customers read {res.read}, Stripe customers updated {res.updated}"
        f" ({', '.join(res.updated_customers) or '-'}), own writes skipped {res.skipped_own_writes},"
        f" cursor {res.cursor}, Sage requests {counter.count}"
    )


@dg.job(description="Sage → Stripe: copy Sage-owned customer fields (e.g. email, address) to Stripe.")
def customer_sync_job() -> None:
    """Sage → Stripe: copy Sage-owned customer fields (e.g. email, address) to Stripe."""
    sync_sage_customers_to_stripe()


customer_sync_schedule = dg.ScheduleDefinition(
    name="customer_sync_schedule",
    job=customer_sync_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    description="Every 15 minutes: Sage-side customer edits reach Stripe.",
)

defs = dg.Definitions(
    assets=[*LOAD_ASSETS, dead_letters_spec],
    jobs=[load_job, redrive_dead_letters_job, customer_sync_job],
    schedules=[customer_sync_schedule],
)
