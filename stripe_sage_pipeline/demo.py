"""The main job on embedded defaults: Postgres, the sandboxes and the whole pipeline, then a summary.

Everything runs through the same Dagster definitions that the UI and the schedules use; the demo
only starts the servers, points the environment at them and reports what happened.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg

from .dagster_home import prepare_dagster_home
from .db import database_url, libpq_url
from .settings import SANDBOX_STRIPE_KEY, load_settings
from .stripe_extract.tables import SCHEMA, TABLES

STAGING_TABLES = [*TABLES, "payout_balance_transactions"]


@dataclass
class DemoResult:
    """What the demo did, in the shape of `--json`."""

    rows: dict[str, int] = field(default_factory=dict)
    emulator_counts: dict[str, int] = field(default_factory=dict)
    window: dict[str, str] = field(default_factory=dict)
    balance_transactions: dict[str, dict[str, int]] = field(default_factory=dict)
    emulator_balance_transactions: dict[str, dict[str, int]] = field(default_factory=dict)
    payouts: dict[str, int] = field(default_factory=dict)
    postings: dict[str, int] = field(default_factory=dict)
    dead_letters: dict = field(default_factory=lambda: {"count": 0, "reasons": {}})
    gl_movement: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    psql: str = ""

    def as_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _partition_key(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d-%H:00")


def _run_job(defs: dg.Definitions, job_name: str, instance: dg.DagsterInstance, tags: dict | None = None) -> None:
    result = defs.resolve_job_def(job_name).execute_in_process(instance=instance, tags=tags or {}, raise_on_error=True)
    if not result.success:
        raise RuntimeError(f"{job_name} failed")


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


def run_demo(days: int = 30, seed: int = 7, load: Path | None = None, echo=print) -> DemoResult:
    """Start everything on embedded defaults, run the pipeline, return the summary."""
    from .sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState, generate, load_golden

    settings = load_settings()
    res = DemoResult()
    t0 = time.monotonic()
    url = database_url(settings)
    conninfo = libpq_url(url)
    res.psql = f"psql {conninfo}"
    echo(f"PostgreSQL ready: {res.psql}")

    state = EmulatorState(EmulatorConfig(seed=seed))
    if load:
        load_golden(state, str(load))
    else:
        generate(state, seed=seed, days=days)
    emulator = EmulatorServer(state, host="127.0.0.1", port=0).start()
    summary = state.summary()
    res.emulator_counts = summary["counts"]
    res.emulator_balance_transactions = summary["balance_transactions"]
    echo(f"Stripe emulator on {emulator.url} with {sum(res.emulator_counts.values())} objects")

    os.environ["STRIPE_API_BASE"] = emulator.url
    os.environ["STRIPE_API_KEY"] = SANDBOX_STRIPE_KEY
    # The emulator has no limit of its own in the demo; real Stripe keys keep the 22/s default.
    os.environ.setdefault("STRIPE_RATE_LIMIT_PER_S", "500")
    prepare_dagster_home(settings)
    instance = dg.DagsterInstance.get()

    from .definitions import defs as build_defs

    defs = build_defs()
    hours = [k for counts in summary["counts_by_hour"].values() for k in counts]
    first = datetime.strptime(min(hours), "%Y-%m-%dT%H").replace(tzinfo=UTC)
    last = datetime.strptime(max(hours), "%Y-%m-%dT%H").replace(tzinfo=UTC)
    start_key, end_key = _partition_key(int(first.timestamp())), _partition_key(int(last.timestamp()))
    res.window = {"from": start_key, "to": end_key}
    echo(f"Extracting Stripe objects created {start_key} .. {end_key} (UTC hours) in one backfill run")
    t1 = time.monotonic()
    _run_job(defs, "extract_job", instance, tags={
        "dagster/asset_partition_range_start": start_key,
        "dagster/asset_partition_range_end": end_key,
    })
    _run_job(defs, "update_path_job", instance)
    res.seconds["extract"] = round(time.monotonic() - t1, 1)
    res.rows = staging_counts(conninfo)
    res.balance_transactions = staging_bt_sums(conninfo)
    emulator.stop()
    res.seconds["total"] = round(time.monotonic() - t0, 1)
    return res


def format_summary(res: DemoResult) -> str:
    """The summary a finance user reads at the end of the demo."""
    lines = ["", "Stripe → staging (rows extracted vs objects at Stripe)"]
    for t in STAGING_TABLES:
        got, want = res.rows.get(t, 0), res.emulator_counts.get(t)
        mark = "" if want is None else ("  ✓ matches Stripe" if got == want else f"  ✗ Stripe has {want}")
        lines.append(f"  {t:<30} {got:>8}{mark}")
    lines.append("Balance transactions per currency (Σ in minor units: amount / fee / net)")
    for cur, s in sorted(res.balance_transactions.items()):
        ok = res.emulator_balance_transactions.get(cur) == s
        lines.append(f"  {cur.upper():<5} {s['amount']:>14} {s['fee']:>12} {s['net']:>14}  {'✓ ties to Stripe' if ok else '✗ differs from Stripe'}")
    lines += ["", f"Query the staging tables:  {res.psql}", f"Took {res.seconds.get('total', 0)} s"]
    return "\n".join(lines)


def main_demo(days: int, seed: int, load: Path | None, as_json: bool) -> int:
    """Entry point of `stripe-sage demo`."""
    echo = (lambda *_: None) if as_json else print
    res = run_demo(days=days, seed=seed, load=load, echo=echo)
    if as_json:
        print(json.dumps(res.as_json(), indent=1, sort_keys=True))
    else:
        print(format_summary(res))
    ok = all(res.rows.get(t) == n for t, n in res.emulator_counts.items() if t in res.rows)
    return 0 if ok else 1
