"""The main job on embedded defaults: Postgres, both sandboxes and the whole pipeline, then a summary.

Everything runs through the same Dagster definitions (and the same Dagster instance, on Postgres) that
the UI, the schedules and the sensors use; the demo only starts the servers, points the environment at
them, runs the jobs in the order the automation chains them, and reports what happened.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg

from stripe_sage_pipeline.automation import rules as automation
from stripe_sage_pipeline.cli.checks import run_checks
from stripe_sage_pipeline.cli.errors import CommandError
from stripe_sage_pipeline.cli.jobs import execute_job
from stripe_sage_pipeline.extract.tables import SCHEMA, TABLES
from stripe_sage_pipeline.load.plan import POSTABLE_PAYOUT_STATUSES
from stripe_sage_pipeline.money import to_decimal_str
from stripe_sage_pipeline.runtime.dagster_home import (
    hold_storage_connections,
    prepare_dagster_home,
    remember_partitions_start,
)
from stripe_sage_pipeline.runtime.db import database_url, libpq_url, redact_url
from stripe_sage_pipeline.settings import SANDBOX_STRIPE_KEY, load_settings

STAGING_TABLES = [*TABLES, "payout_balance_transactions"]
DEMO_SCHEMAS = ("stripe_staging", "finance", "finance_staging", "finance_intermediate", "finance_config", "sage_sync")
ACCOUNT_NAMES = {
    "1010": "Operating Bank",
    "1150": "Stripe Clearing",
    "1200": "Accounts Receivable",
    "2200": "Sales Tax Payable",
    "4000": "Sales Revenue",
    "4050": "Sales Refunds",
    "4060": "Chargebacks",
    "6100": "Processing Fees",
    "6110": "Dispute Fees",
    "7900": "FX Gain/Loss",
    "9999": "Stripe Suspense",
    "1170": "Reserves Held",
    "1175": "Issuing Funds Held",
    "2300": "Due to Connected",
    "2400": "Stripe Capital",
    "2500": "Unapplied Funds",
    "4100": "Platform Revenue",
    "6300": "Issuing Spend",
    "6400": "Climate",
    "6900": "Adjustments",
}


@dataclass
class DemoResult:
    """What the demo did, in the shape of `--json`."""

    rows: dict[str, int] = field(default_factory=dict)
    emulator_counts: dict[str, int] = field(default_factory=dict)
    window: dict[str, str] = field(default_factory=dict)
    balance_transactions: dict[str, dict[str, int]] = field(default_factory=dict)
    emulator_balance_transactions: dict[str, dict[str, int]] = field(default_factory=dict)
    payouts: dict[str, int] = field(default_factory=dict)
    payouts_not_reconciled: list[dict] = field(default_factory=list)
    postings: dict[str, dict[str, int]] = field(default_factory=dict)
    dead_letters: dict = field(default_factory=lambda: {"count": 0, "reasons": {}})
    gl_movement: dict[str, dict[str, str]] = field(default_factory=dict)
    tie_out: dict[str, dict[str, str]] = field(default_factory=dict)
    posting_mode: str = ""
    target: str = "sagepro"
    # Per currency and account: detail minus payout_summary, and the activity not yet paid out
    # (finance.fct_activity_not_paid_out); they must be equal (docs/accounting.md).
    mode_difference: dict[str, dict[str, str]] = field(default_factory=dict)
    not_paid_out: dict[str, dict[str, str]] = field(default_factory=dict)
    reconciled_payouts_with_clearing_left: int = 0
    days_loaded: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    psql: str = ""
    close_pack: str = ""
    ui: str = "stripe-sage ui  (then open http://127.0.0.1:3000)"

    def as_json(self) -> dict:
        return dict(self.__dict__)


def _partition_key(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d-%H:00")


def _run_job(defs: dg.Definitions, job_name: str, instance: dg.DagsterInstance, **kwargs) -> None:
    execute_job(defs, job_name, instance, load_settings().data_dir / "demo-logs" / f"{job_name}.log", **kwargs)


def _reset(conninfo: str, sage_dir: Path) -> None:
    """The demo starts from empty schemas and an empty Sage sandbox, so its numbers are its own."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for schema in DEMO_SCHEMAS:
            conn.execute(f"drop schema if exists {schema} cascade")
    shutil.rmtree(sage_dir, ignore_errors=True)


def staging_counts(conninfo: str) -> dict[str, int]:
    """Rows per staging table."""
    with psycopg.connect(conninfo) as conn:
        return {t: conn.execute(f"select count(*) from {SCHEMA}.{t}").fetchone()[0] for t in STAGING_TABLES}


def staging_bt_sums(conninfo: str) -> dict[str, dict[str, int]]:
    """Σ amount, fee and net of staged balance transactions per currency (integers, minor units)."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            f"select currency, sum(amount)::bigint, sum(fee)::bigint, sum(net)::bigint from {SCHEMA}.balance_transactions group by 1 order by 1"
        ).fetchall()
    return {c: {"amount": a, "fee": f, "net": n} for c, a, f, n in rows}


def mode_comparison(conninfo: str) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]], int]:
    """(detail minus payout_summary, activity not yet paid out) per currency and account, and how many
    reconciled automatic payouts' summary entries leave a clearing line (must be 0)."""
    with psycopg.connect(conninfo) as conn:
        diff_rows = conn.execute(
            "select currency, account_code, sum(case posting_mode when 'detail' then debit - credit"
            " else credit - debit end)::bigint from finance.fct_journal_lines group by 1, 2 order by 1, 2"
        ).fetchall()
        unpaid_rows = conn.execute(
            "select currency, account_code, sum(net_amount)::bigint from finance.fct_activity_not_paid_out"
            " group by 1, 2 order by 1, 2"
        ).fetchall()
        # A reconciled payout's summary nets clearing to zero, except for the amount of a payout that
        # failed after it was paid and that it swept again (offset by that payout's reversal entry).
        clearing_left = conn.execute(
            "with clearing as (select j.stripe_account, j.payout_id, sum(j.debit - j.credit) as m"
            " from finance.fct_journal_lines as j"
            " join finance.fct_payout_reconciliation as r on r.stripe_account = j.stripe_account and r.payout_id = j.payout_id"
            " join finance_config.settings as s on true"
            " left join finance_config.currency_accounts as ca on ca.currency = j.currency"
            " where j.entry_type = 'payout_summary' and r.reconciliation_status = 'reconciled'"
            " and j.account_code = coalesce(ca.clearing_account, s.default_clearing_account) group by 1, 2)"
            " select count(*) from clearing as c where c.m <> coalesce((select -sum(b.amount)"
            " from finance_intermediate.int_balance_transactions__classified as b"
            " join stripe_staging.payouts as fp on fp.stripe_account = b.stripe_account"
            " and fp.failure_balance_transaction_id = b.balance_transaction_id"
            " where b.stripe_account = c.stripe_account and b.payout_id = c.payout_id"
            " and b.created_at >= fp.arrival_date), 0)"
        ).fetchone()[0]
    diff: dict[str, dict[str, str]] = {}
    for cur, acct, m in diff_rows:
        if m:
            diff.setdefault(cur, {})[acct] = to_decimal_str(int(m), cur)
    unpaid: dict[str, dict[str, str]] = {}
    for cur, acct, m in unpaid_rows:
        if m:
            unpaid.setdefault(cur, {})[acct] = to_decimal_str(int(m), cur)
    return diff, unpaid, int(clearing_left)


def _finance_summary(conninfo: str, res: DemoResult) -> None:
    res.mode_difference, res.not_paid_out, res.reconciled_payouts_with_clearing_left = mode_comparison(conninfo)
    with psycopg.connect(conninfo) as conn:
        res.payouts = dict(
            conn.execute(
                "select reconciliation_status, count(*) from finance.fct_payout_reconciliation group by 1 order by 1"
            ).fetchall()
        )
        res.payouts_not_reconciled = [
            {"payout": p, "status": s, "currency": c, "difference": to_decimal_str(int(d), c)}
            for p, s, c, d in conn.execute(
                "select payout_id, reconciliation_status, currency, difference from finance.fct_payout_reconciliation "
                "where reconciliation_status <> all(%s) order by payout_id limit 20",
                (list(POSTABLE_PAYOUT_STATUSES),),
            )
        ]
        # A short history may have no posting day at all: then the load never created its ledger.
        if conn.execute("select to_regclass('sage_sync.posting_ledger')").fetchone()[0] is not None:
            for resource, status, n in conn.execute(
                "select resource, status, count(*) from sage_sync.posting_ledger group by 1, 2 order by 1, 2"
            ):
                res.postings.setdefault(resource, {})[status] = n
            reasons = dict(
                conn.execute(
                    "select coalesce(reason, 'unknown'), count(*) from sage_sync.dead_letters group by 1 order by 2 desc"
                ).fetchall()
            )
            res.dead_letters = {"count": sum(reasons.values()), "reasons": reasons}
        # What the bank statement shows: Σ paid payouts, less those that failed after arriving.
        bank = conn.execute(
            "select currency, sum(amount) filter (where status = 'paid')::bigint from stripe_staging.payouts group by 1"
        ).fetchall()
        # Money that came in from (or went back to) the bank itself, e.g. top-ups: the bank legs of
        # activity entries in the posted mode (in payout_summary mode only what has been paid out).
        from_bank = dict(
            conn.execute(
                "select j.currency, sum(j.debit - j.credit)::bigint from finance.fct_journal_lines as j"
                " join finance_config.settings as s on true"
                " left join finance_config.currency_accounts as ca on ca.currency = j.currency"
                " where j.posting_mode = 'detail' and j.entry_type = 'balance_transaction'"
                " and j.account_code = coalesce(ca.bank_account, s.default_bank_account) group by 1"
            ).fetchall()
        )
        unpaid_bank = dict(
            conn.execute(
                "select n.currency, sum(n.net_amount)::bigint from finance.fct_activity_not_paid_out as n"
                " join finance_config.settings as s on true"
                " left join finance_config.currency_accounts as ca on ca.currency = n.currency"
                " where n.account_code = coalesce(ca.bank_account, s.default_bank_account) group by 1"
            ).fetchall()
        )
    summary_mode = res.posting_mode == "payout_summary"
    for cur, paid in bank:
        gl = res.gl_movement.get(cur, {})
        other = int(from_bank.get(cur) or 0) - (int(unpaid_bank.get(cur) or 0) if summary_mode else 0)
        res.tie_out[cur] = {
            "stripe_paid_payouts": to_decimal_str(int(paid or 0), cur),
            "bank_activity": to_decimal_str(other, cur),
            "expected_bank_movement": to_decimal_str(int(paid or 0) + other, cur),
            "sage_bank_movement": gl.get("1010", to_decimal_str(0, cur)),
            "sage_trial_balance_total": f"{sum((Decimal(v) for v in gl.values()), Decimal(0))}",
        }


def _mapping_with_mode(settings, posting_mode: str) -> Path:
    """A copy of the mapping with another posting mode (the demo's --posting-mode)."""
    import yaml

    data = yaml.safe_load(settings.mapping_file.read_text())
    data["posting_mode"] = posting_mode
    path = settings.data_dir / f"demo-mapping-{posting_mode}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_demo(
    days: int = 30,
    seed: int = 7,
    load: Path | None = None,
    echo=print,
    target: str | None = None,
    posting_mode: str | None = None,
) -> DemoResult:
    """Start everything on embedded defaults, run the pipeline end to end, return the summary.
    `posting_mode` (detail | payout_summary) overrides the mapping's for this run."""
    from stripe_sage_pipeline.sage.factory import make_target_client
    from stripe_sage_pipeline.sage.readback import gl_movement
    from stripe_sage_sandboxes.stripe_emulator import (
        EmulatorConfig,
        EmulatorServer,
        EmulatorState,
        generate,
        load_golden,
    )
    from stripe_sage_sandboxes.targets import start_target_sandbox

    settings = load_settings()
    if posting_mode:
        os.environ["STRIPE_SAGE_MAPPING"] = str(_mapping_with_mode(settings, posting_mode))
    res = DemoResult(target=target or settings.sage_target)
    t0 = time.monotonic()
    # The set-up first (`stripe-sage doctor`'s local checks; Stripe and Sage Pro are the demo's own sandboxes).
    failed = [
        r
        for r in run_checks(settings, only=["mapping", "database", "dagster"], echo=echo, stop_at_failure=True)
        if not r.ok
    ]
    if failed:
        raise CommandError(failed[0].detail)
    conninfo = libpq_url(database_url(settings))
    # The URL's password (an external STRIPE_SAGE_DATABASE_URL has one) never reaches the screen or --json.
    res.psql = f"psql {redact_url(conninfo)}"
    echo(f"PostgreSQL ready: {res.psql}")
    sage_dir = settings.data_dir / "sage-sandbox-demo"
    _reset(conninfo, sage_dir)

    state = EmulatorState(EmulatorConfig(seed=seed))
    if load:
        load_golden(state, str(load))
    else:
        generate(state, seed=seed, days=days)
    emulator = EmulatorServer(state, host="127.0.0.1", port=0).start()
    # The demo's sandbox allows more than the default 120/min so a month posts in seconds.
    sage, sage_name, sage_env = start_target_sandbox(res.target, sage_dir, rate_per_minute=6000)
    summary = state.summary()
    res.emulator_counts = summary["counts"]
    res.emulator_balance_transactions = summary["balance_transactions"]
    echo(
        f"Stripe emulator on {emulator.url} ({sum(res.emulator_counts.values())} objects); "
        f"{sage_name} on {sage.base_url}"
    )
    try:
        os.environ.update({"STRIPE_API_BASE": emulator.url, "STRIPE_API_KEY": SANDBOX_STRIPE_KEY, **sage_env})
        # The emulator has no limit of its own in the demo; real Stripe keys keep the 22/s default.
        os.environ.setdefault("STRIPE_RATE_LIMIT_PER_S", "500")
        hours = [k for counts in summary["counts_by_hour"].values() for k in counts]
        first = datetime.strptime(min(hours), "%Y-%m-%dT%H").replace(tzinfo=UTC)
        last = datetime.strptime(max(hours), "%Y-%m-%dT%H").replace(tzinfo=UTC)
        start_key, end_key = _partition_key(int(first.timestamp())), _partition_key(int(last.timestamp()))
        # The partitions start at the data's first day (the UI then shows no empty days before it);
        # remembered in DAGSTER_HOME so that `stripe-sage ui` shows the same partitions.
        os.environ["STRIPE_SAGE_START_DATE"] = partitions_start = f"{first:%Y-%m-%d}-00:00"
        remember_partitions_start(prepare_dagster_home(settings), partitions_start)
        instance = hold_storage_connections(dg.DagsterInstance.get())
        # A demo killed mid-run (Ctrl-C, SIGKILL) left its run STARTED holding its pool slot: fail it, free it.
        from stripe_sage_pipeline.runtime.recovery import recover

        recovered = recover(instance, grace_s=0)
        if recovered:
            echo(f"Recovered from an earlier run: {recovered.summary()}")
        from stripe_sage_pipeline.definitions import defs as build_defs
        from stripe_sage_pipeline.transform.mapping import load_mapping

        defs = build_defs()
        res.posting_mode = load_mapping().posting_mode
        res.window = {"from": start_key, "to": end_key}

        echo(f"1/4 Extract: Stripe objects created {start_key} .. {end_key} (UTC hours), one history run")
        t = time.monotonic()
        _run_job(
            defs,
            "stripe_history_job",
            instance,
            run_config={"ops": {"extract_history": {"config": {"start": start_key, "end": end_key}}}},
        )
        _run_job(defs, "update_path_job", instance)
        res.seconds["extract"] = round(time.monotonic() - t, 1)
        res.rows = staging_counts(conninfo)
        res.balance_transactions = staging_bt_sums(conninfo)

        echo("2/4 Transform: mapping, dbt models and tests, blocking Great Expectations checks")
        t = time.monotonic()
        _run_job(defs, "transform_job", instance)
        res.seconds["transform"] = round(time.monotonic() - t, 1)

        today = datetime.now(UTC).date()
        load_days = automation.days_to_load(conninfo, today=max(today, date(2026, 12, 31)))
        echo(f"3/4 Load: {len(load_days)} posting day(s) to {sage_name} ({res.posting_mode} mode)")
        t = time.monotonic()
        for d in load_days:
            _run_job(defs, "load_job", instance, partition_key=f"{d:%Y-%m-%d}")
        res.days_loaded = len(load_days)
        res.seconds["load"] = round(time.monotonic() - t, 1)

        echo(f"4/4 Reading the GL back from {sage_name}")
        client, _ = make_target_client(load_settings())
        try:
            res.gl_movement = gl_movement(client)
        finally:
            client.close()
        _finance_summary(conninfo, res)
        if load_days:
            # The month-end close pack (HTML + chart) of the month with the most posting days, through Dagster.
            from collections import Counter

            from stripe_sage_pipeline.reporting import default_out_dir

            month = max(Counter(f"{d:%Y-%m}" for d in load_days).items(), key=lambda kv: (kv[1], kv[0]))[0]
            echo(f"Close pack for {month}")
            _run_job(defs, "close_pack_job", instance, partition_key=f"{month}-01")
            res.close_pack = str(default_out_dir(month) / "close_pack.html")
    finally:
        emulator.stop()
        sage.stop()
    res.seconds["total"] = round(time.monotonic() - t0, 1)
    return res


def format_summary(res: DemoResult) -> str:
    """The summary a controller reads at the end of the demo."""
    out = ["", "STRIPE → STAGING  (rows extracted vs objects at Stripe)"]
    for t in STAGING_TABLES:
        got, want = res.rows.get(t, 0), res.emulator_counts.get(t)
        mark = "" if want is None else ("  ✓ matches Stripe" if got == want else f"  ✗ Stripe has {want}")
        out.append(f"  {t:<30} {got:>8}{mark}")
    out.append("  balance transactions per currency (Σ amount / fee / net):")
    for cur, s in sorted(res.balance_transactions.items()):
        ok = res.emulator_balance_transactions.get(cur) == s
        out.append(
            f"    {cur.upper():<4} {to_decimal_str(s['amount'], cur):>14} {to_decimal_str(s['fee'], cur):>12} "
            f"{to_decimal_str(s['net'], cur):>14}  {'✓ ties to Stripe' if ok else '✗ differs from Stripe'}"
        )
    out += ["", "PAYOUTS  (each payout against the sum of what it swept)"]
    for status, n in sorted(res.payouts.items()):
        out.append(f"  {status:<12} {n:>6}")
    for p in res.payouts_not_reconciled[:10]:
        out.append(f"    {p['payout']}: {p['status']}, difference {p['difference']} {p['currency'].upper()}")
    label = "SAGE INTACCT" if res.target == "intacct" else "SAGE PRO"
    out += ["", f"POSTED TO {label}  ({res.posting_mode} mode, {res.days_loaded} posting days)"]
    for resource, by_status in sorted(res.postings.items()):
        out.append(f"  {resource:<18} " + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
    out.append(
        f"  dead letters: {res.dead_letters['count']}"
        + (
            ""
            if not res.dead_letters["count"]
            else "  ("
            + ", ".join(f"{r}: {n}" for r, n in res.dead_letters["reasons"].items())
            + ") — see sage_sync.dead_letters"
        )
    )
    out += ["", f"GL MOVEMENT IN {label}  (net debit + / credit −, read back from Sage)"]
    for cur, accts in sorted(res.gl_movement.items()):
        out.append(f"  {cur.upper()}")
        for code, amount in sorted(accts.items()):
            out.append(f"    {code} {ACCOUNT_NAMES.get(code, ''):<20} {amount:>16}")
    out += ["", "ACTIVITY NOT YET PAID OUT  (detail minus payout_summary, per account)"]
    for cur in sorted(set(res.mode_difference) | set(res.not_paid_out)):
        diff, unpaid = res.mode_difference.get(cur, {}), res.not_paid_out.get(cur, {})
        ok = diff == unpaid
        out.append(f"  {cur.upper()}: {'✓ equals the activity not yet paid out' if ok else '✗ differs from it'}")
        for code in sorted(set(diff) | set(unpaid)):
            out.append(
                f"    {code} {ACCOUNT_NAMES.get(code, ''):<20} {unpaid.get(code, '0'):>16}"
                + ("" if ok else f"   (detail − summary {diff.get(code, '0')})")
            )
    if not res.mode_difference and not res.not_paid_out:
        out.append("  none: everything is paid out, both modes are equal  ✓")
    out.append(
        f"  reconciled payouts whose summary leaves clearing non-zero: {res.reconciled_payouts_with_clearing_left}"
        f"  {'✓' if res.reconciled_payouts_with_clearing_left == 0 else '✗'}"
    )
    out += ["", "TIE-OUT"]
    for cur, t in sorted(res.tie_out.items()):
        ok_bank = t["expected_bank_movement"] == t["sage_bank_movement"]
        ok_tb = Decimal(t["sage_trial_balance_total"]) == 0
        extra = "" if Decimal(t["bank_activity"]) == 0 else f" {t['bank_activity']} from top-ups"
        out.append(
            f"  {cur.upper()}: bank 1010 moved {t['sage_bank_movement']} in Sage; Stripe paid out "
            f"{t['stripe_paid_payouts']}{extra}  {'✓' if ok_bank else '✗'}   trial balance nets to "
            f"{t['sage_trial_balance_total']}  {'✓' if ok_tb else '✗'}"
        )
    out += [
        "",
        "NEXT",
        f"  query the data:   {res.psql}",
        f"  open the UI:      {res.ui}",
        *([f"  close pack:       {res.close_pack}"] if res.close_pack else []),
        "  map in a browser: stripe-sage mapping  (then open http://127.0.0.1:3100)",
        "  re-drive dead letters after a fix:  stripe-sage redrive",
        "  stop the embedded PostgreSQL:       stripe-sage db stop",
        f"  took {res.seconds.get('total', 0)} s (extract {res.seconds.get('extract')} s, transform "
        f"{res.seconds.get('transform')} s, load {res.seconds.get('load')} s)",
    ]
    return "\n".join(out)


def main_demo_args(args) -> int:
    """Entry point of `stripe-sage demo` (parsed arguments)."""
    return main_demo(args.days, args.seed, args.load, args.json, target=args.target, posting_mode=args.posting_mode)


def main_demo(
    days: int, seed: int, load: Path | None, as_json: bool, target: str | None = None, posting_mode: str | None = None
) -> int:
    """Entry point of `stripe-sage demo` (`target`: sagepro or intacct; default SAGE_TARGET;
    `posting_mode`: detail or payout_summary instead of the mapping's)."""
    echo = (lambda *_: None) if as_json else print
    res = run_demo(days=days, seed=seed, load=load, echo=echo, target=target, posting_mode=posting_mode)
    if as_json:
        print(json.dumps(res.as_json(), indent=1, sort_keys=True, default=str))
    else:
        print(format_summary(res))
    counts_ok = all(res.rows.get(t) == n for t, n in res.emulator_counts.items() if t in res.rows)
    return 0 if counts_ok else 1
