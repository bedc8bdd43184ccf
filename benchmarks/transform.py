"""Benchmark of the finance transformation: a full build over 1M balance transactions, then an
incremental run after 1% more arrive.

Data is generated straight into stripe_staging with SQL (generate_series): charges, refunds,
disputes and fee transactions spread over a year, one automatic payout per day with its
membership. "Build" means what the transform job runs: dbt build (models + dbt tests; an
incremental run over unchanged dbt code skips the staging views and the unit tests, see
`transform.BuildPlan`) plus the Great Expectations suites (every row the first time, then the
rows written since each check last passed).

    python benchmarks/transform.py [--rows 1000000] [--reuse-data]

Uses STRIPE_SAGE_DATABASE_URL's server when set, else the embedded one (STRIPE_SAGE_DATA_DIR and
STRIPE_SAGE_PG_PORT give the benchmark a server of its own); works in a database of its own
(`bench_transform`), dropped and recreated each time. `--reuse-data` keeps the generated history in
a template database (`bench_transform_seed_<rows>`) and clones it on later runs instead of
generating it again (the timed builds are the same).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import psycopg

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# A target folder of its own, so a benchmark never races a test run over dbt's partial-parse state.
os.environ.setdefault("DBT_TARGET_PATH", os.path.join(tempfile.gettempdir(), "stripe_sage_bench_dbt_target"))

from stripe_sage_pipeline.extract.staging import ensure_schema  # noqa: E402
from stripe_sage_pipeline.quality import run_suite  # noqa: E402
from stripe_sage_pipeline.runtime.db import database_url, libpq_url  # noqa: E402
from stripe_sage_pipeline.transform.build import BuildPlan, dbt_build, prepare_database  # noqa: E402

BENCH_DB = "bench_transform"
SUITES = ("staging", "journal_lines", "payout_reconciliation", "invoice_lines")

# One batch of balance transactions i in [lo, hi): the kind follows i % 100 (88% charges, 10%
# refunds, 1% disputes, 1% Stripe fees), created evenly over `span_s` seconds from `t0`.
GENERATE = """
create temp table gen as
select
    i,
    'txn_b' || i as bt_id,
    case when i %% 100 < 88 then 'charge' when i %% 100 < 98 then 'refund' when i %% 100 = 98 then 'dispute' else 'fee' end as kind,
    %(t0)s::timestamptz + ((i - %(lo)s) * %(span_s)s / (%(hi)s - %(lo)s)) * interval '1 second' as created,
    (500 + (i * 7919) %% 49500)::bigint as base_amount
from generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) as i;

alter table gen add column amount bigint, add column fee bigint, add column category text, add column type text,
    add column source_id text, add column day date;
update gen set
    amount = case kind when 'charge' then base_amount when 'refund' then -base_amount / 2
                       when 'dispute' then -base_amount else -(base_amount / 100) end,
    fee = case kind when 'charge' then base_amount * 29 / 1000 + 30 when 'dispute' then 1500 else 0 end,
    category = kind,
    type = case kind when 'dispute' then 'adjustment' when 'fee' then 'stripe_fee' else kind end,
    source_id = case kind when 'charge' then 'ch_b' || i when 'refund' then 're_b' || i when 'dispute' then 'dp_b' || i else null end,
    day = (created at time zone 'UTC')::date;

-- Customers sign up over the history like everything else (just before their first charge) and are
-- extracted ten minutes later by the hourly runs, not all at one instant.
insert into stripe_staging.customers (stripe_account, id, created, name, email, livemode, raw, _extracted_at)
select '', 'cus_b' || c, t.created, 'Customer ' || c, 'c' || c || '@example.com', false, '{}'::jsonb,
    coalesce(%(extracted)s::timestamptz, t.created + interval '10 minutes')
from generate_series((%(lo)s / 50)::bigint, (%(hi)s / 50)::bigint - 1) as c,
    lateral (select %(t0)s::timestamptz
             + ((c * 50 - %(lo)s) * %(span_s)s / (%(hi)s - %(lo)s)) * interval '1 second' as created) as t
on conflict do nothing;

insert into stripe_staging.charges (stripe_account, id, created, amount, amount_captured, amount_refunded, currency,
    customer_id, balance_transaction_id, status, paid, captured, refunded, disputed, description, metadata, livemode,
    raw, _extracted_at)
select '', source_id, created, amount, amount, 0, 'usd', 'cus_b' || (i / 50), bt_id, 'succeeded', true, true, false,
    false, 'Order ' || i,
    case when i %% 20 = 0 then jsonb_build_object('tax_amount', (amount / 11)::text) else '{}'::jsonb end,
    false, '{}'::jsonb, coalesce(%(extracted)s::timestamptz, created + interval '10 minutes')
from gen where kind = 'charge';

insert into stripe_staging.balance_transactions (stripe_account, id, created, available_on, amount, fee, net, currency,
    type, reporting_category, source_id, status, fee_details, raw, _extracted_at)
select '', bt_id, created, created + interval '2 days', amount, fee, amount - fee, 'usd', type, category, source_id,
    'available',
    case when fee <> 0 then jsonb_build_array(jsonb_build_object('amount', fee, 'currency', 'usd', 'type', 'stripe_fee'))
         else '[]'::jsonb end,
    '{}'::jsonb, coalesce(%(extracted)s::timestamptz, created + interval '10 minutes')
from gen;

-- One automatic payout per day, sweeping that day's transactions.
create temp table gen_payouts as
select 'po_b' || %(lo)s || '_' || to_char(day, 'YYYYMMDD') as payout_id, day, sum(amount - fee)::bigint as amount
from gen group by day;

insert into stripe_staging.balance_transactions (stripe_account, id, created, available_on, amount, fee, net, currency,
    type, reporting_category, source_id, status, fee_details, raw, _extracted_at)
select '', 'txn_' || payout_id, (day + 1)::timestamptz, (day + 1)::timestamptz, -amount, 0, -amount, 'usd', 'payout',
    'payout', payout_id, 'available', '[]'::jsonb, '{}'::jsonb, coalesce(%(extracted)s::timestamptz, (day + 1)::timestamptz + interval '10 minutes')
from gen_payouts;

insert into stripe_staging.payouts (stripe_account, id, created, amount, currency, arrival_date, automatic, status,
    method, type, balance_transaction_id, raw, _extracted_at)
select '', payout_id, (day + 1)::timestamptz, amount, 'usd', (day + 2)::timestamptz, true, 'paid', 'standard',
    'bank_account', 'txn_' || payout_id, '{}'::jsonb, coalesce(%(extracted)s::timestamptz, (day + 1)::timestamptz + interval '10 minutes')
from gen_payouts;

insert into stripe_staging.payout_balance_transactions (stripe_account, payout_id, balance_transaction_id, _extracted_at)
select '', 'po_b' || %(lo)s || '_' || to_char(day, 'YYYYMMDD'), bt_id, coalesce(%(extracted)s::timestamptz, (day + 1)::timestamptz + interval '10 minutes') from gen
union all
select '', payout_id, 'txn_' || payout_id, coalesce(%(extracted)s::timestamptz, (day + 1)::timestamptz + interval '10 minutes') from gen_payouts;

drop table gen;
drop table gen_payouts;
"""


def _server_url(database: str) -> str:
    parts = urlsplit(database_url())
    return urlunsplit(parts._replace(path=f"/{database}"))


def recreate_database(template: str | None = None) -> str:
    """Drop and create the benchmark database (a copy of `template` when given); return its URL."""
    with psycopg.connect(libpq_url(_server_url("postgres")), autocommit=True) as conn:
        conn.execute(f"drop database if exists {BENCH_DB} with (force)")
        conn.execute(f"create database {BENCH_DB}" + (f" template {template}" if template else ""))
    return _server_url(BENCH_DB)


def seed_exists(seed: str) -> bool:
    """True when the template database of a previous --reuse-data run exists."""
    with psycopg.connect(libpq_url(_server_url("postgres")), autocommit=True) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (seed,)).fetchone() is not None


def save_seed(seed: str) -> None:
    """Copy the freshly generated benchmark database into the template `seed`."""
    with psycopg.connect(libpq_url(_server_url("postgres")), autocommit=True) as conn:
        conn.execute(f"drop database if exists {seed} with (force)")
        conn.execute(f"create database {seed} template {BENCH_DB}")


def generate(url: str, lo: int, hi: int, t0: datetime, span_s: int, extracted: datetime | None) -> None:
    """Generate balance transactions [lo, hi) and everything that goes with them into staging."""
    with psycopg.connect(libpq_url(url)) as conn:
        ensure_schema(conn)
        psycopg.ClientCursor(conn).execute(
            GENERATE, {"lo": lo, "hi": hi, "t0": t0, "span_s": span_s, "extracted": extracted}
        )
        conn.commit()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("vacuum analyze")


def build(url: str, full_refresh: bool) -> tuple[float, float, dict[str, bool], BuildPlan]:
    """One build as the transform job runs it: dbt build (models + tests, as `plan_build` decides),
    then the GE suites over the rows written since they last passed; returns (dbt s, GE s, suite
    results, the plan)."""
    t = time.perf_counter()
    plan = dbt_build(url=url, full_refresh=full_refresh, prepare=False).plan
    t_dbt = time.perf_counter() - t
    t = time.perf_counter()
    results = {name: run_suite(name, url, scope="changed").passed for name in SUITES}
    return t_dbt, time.perf_counter() - t, results, plan


def main() -> None:
    """Generate, build in full, add 1%, build incrementally, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="balance transactions in the full build")
    ap.add_argument(
        "--reuse-data",
        action="store_true",
        help="clone the generated history from a template database kept by an earlier run",
    )
    args = ap.parse_args()
    n = args.rows
    year = 365 * 86400
    seed = f"{BENCH_DB}_seed_{n}"
    # A year of history ending four days ago, each object extracted ten minutes after its creation
    # (hourly runs); then 1% more over the last four days, extracted now. A reused history ends
    # where it ended when it was generated, so the 1% keeps following it.
    now = datetime.now(UTC).replace(microsecond=0)
    t = time.perf_counter()
    if args.reuse_data and seed_exists(seed):
        url = recreate_database(template=seed)
        with psycopg.connect(libpq_url(url)) as conn:
            first = conn.execute("select min(created) from stripe_staging.balance_transactions").fetchone()[0]
        start = first.astimezone(UTC)
        print(f"database {BENCH_DB}; cloned {n:,} balance transactions from {seed} ...", flush=True)
    else:
        url = recreate_database()
        print(f"database {BENCH_DB}; generating {n:,} balance transactions ...", flush=True)
        start = now - timedelta(days=369)
        generate(url, 0, n, start, year, None)
        if args.reuse_data:
            save_seed(seed)
    prepare_database(url)
    print(f"  ready in {time.perf_counter() - t:.1f} s", flush=True)

    t_dbt, t_ge, ok, plan = build(url, full_refresh=True)
    full = t_dbt + t_ge
    with psycopg.connect(libpq_url(url)) as conn:
        lines = conn.execute("select count(*) from finance.fct_journal_lines").fetchone()[0]
    print(
        f"full build:        {full:7.1f} s  (dbt build {t_dbt:.1f} s + GE suites {t_ge:.1f} s; "
        f"{lines:,} journal lines; suites passed: {all(ok.values())})",
        flush=True,
    )

    extra = n // 100
    generate(url, n, n + extra, start + timedelta(seconds=year), int(year * extra / n), datetime.now(UTC))
    t_dbt, t_ge, ok, plan = build(url, full_refresh=False)
    inc = t_dbt + t_ge
    print(
        f"incremental (+1%): {inc:7.1f} s  (dbt build {t_dbt:.1f} s + GE suites {t_ge:.1f} s; "
        f"suites passed: {all(ok.values())}; staging views and unit tests "
        f"{'run' if plan.code_steps else 'skipped: dbt code unchanged'})"
    )
    print(f"incremental / full = {inc / full:.1%}")


if __name__ == "__main__":
    main()
