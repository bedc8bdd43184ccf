"""`stripe-sage run --from DAY --to DAY`: the pipeline for a date range against the configured endpoints.

The same Dagster jobs and instance as the UI and the automation, in the order the sensors chain them:
`stripe_history_job` for the window (one run, committed hour by hour, resumable), `update_path_job`
(changes to older objects), `transform_job` (mapping, dbt, blocking checks), then `load_job` once per
posting day that has entries Sage has not seen. Every run shows in the UI. A second run of the same
range posts nothing new (every Sage write is idempotent).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg

from stripe_sage_pipeline.cli.checks import run_checks
from stripe_sage_pipeline.cli.errors import CommandError
from stripe_sage_pipeline.cli.jobs import Progress, execute_job
from stripe_sage_pipeline.runtime.dagster_home import (
    hold_storage_connections,
    prepare_dagster_home,
    remember_partitions_start,
)
from stripe_sage_pipeline.runtime.db import database_url, libpq_url
from stripe_sage_pipeline.settings import env_is_set, load_settings


@dataclass
class RunSummary:
    """What `run` did, in the shape of `--json`."""

    window: dict[str, str] = field(default_factory=dict)
    extracted: dict[str, int] = field(default_factory=dict)
    days_loaded: list[str] = field(default_factory=list)
    postings: dict[str, dict[str, int]] = field(default_factory=dict)
    dead_letters_in_window: int = 0
    runs: list[dict[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def parse_day(value: str, flag: str) -> date:
    """A `YYYY-MM-DD` flag value, or a one-line error naming the flag."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{flag} {value!r} is not a day — write it as YYYY-MM-DD (UTC)") from None


def plan_window(start: date, end: date, today: date, partitions_start: str) -> tuple[date, date]:
    """The days to run, checked: FROM ≤ TO, TO at most today, FROM not before the first partition."""
    if end < start:
        raise CommandError(f"--to {end} is before --from {start} — swap them")
    if start > today:
        raise CommandError(f"--from {start} is in the future (today is {today} UTC) — nothing to extract yet")
    first = date.fromisoformat(partitions_start[:10])
    if start < first:
        raise CommandError(
            f"--from {start} is before the first partition STRIPE_SAGE_START_DATE={partitions_start}"
            f" — set STRIPE_SAGE_START_DATE={start}-00:00 (or earlier) and run again"
        )
    return start, min(end, today)


def _extracted(conninfo: str, start: date, end: date) -> dict[str, int]:
    from stripe_sage_pipeline.extract.tables import SCHEMA, TABLES

    lo = datetime(start.year, start.month, start.day, tzinfo=UTC)
    hi = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
    with psycopg.connect(conninfo) as conn:
        return {
            t: conn.execute(
                f"select count(*) from {SCHEMA}.{t} where created >= %s and created < %s", (lo, hi)
            ).fetchone()[0]
            for t in TABLES
        }


def _postings(conninfo: str, start: date, end: date) -> tuple[dict[str, dict[str, int]], int]:
    out: dict[str, dict[str, int]] = {}
    with psycopg.connect(conninfo) as conn:
        if conn.execute("select to_regclass('sage_sync.posting_ledger')").fetchone()[0] is None:
            return out, 0
        for resource, status, n in conn.execute(
            "select resource, status, count(*) from sage_sync.posting_ledger "
            "where partition_date between %s and %s group by 1, 2 order by 1, 2",
            (start, end),
        ):
            out.setdefault(resource, {})[status] = n
    dead = sum(by.get("dead_lettered", 0) for by in out.values())
    return out, dead


def run_range(start: date, end: date, *, load: bool = True, update_path: bool = True, echo=print) -> RunSummary:
    """Check the set-up, then extract → transform → load the UTC days `start`..`end` through the Dagster jobs."""
    import dagster as dg

    from stripe_sage_pipeline.automation import rules as automation

    settings = load_settings()
    today = datetime.now(UTC).date()
    explicit_start = settings.start_date if env_is_set("STRIPE_SAGE_START_DATE") else None
    failed = [r for r in run_checks(settings, echo=echo) if not r.ok]
    if failed:
        raise CommandError(f"{len(failed)} check(s) failed, first: {failed[0].name}: {failed[0].detail}")
    home = prepare_dagster_home(settings)
    partitions_start = explicit_start or load_settings().start_date  # remembered by the home, else the default
    if not explicit_start and start < date.fromisoformat(partitions_start[:10]):
        # Nobody chose the first partition: let it cover this range, here and in later `ui` sessions.
        partitions_start = f"{start}-00:00"
        remember_partitions_start(home, partitions_start)
    os.environ["STRIPE_SAGE_START_DATE"] = partitions_start
    start, end = plan_window(start, end, today, partitions_start)

    from stripe_sage_pipeline.definitions import defs as build_defs

    defs = build_defs()
    conninfo = libpq_url(database_url(settings))
    logs = settings.data_dir / "run-logs"
    res = RunSummary(window={"from": f"{start}", "to": f"{end}"})
    t0 = time.monotonic()
    with hold_storage_connections(dg.DagsterInstance.get()) as instance:

        def job(name: str, **kw) -> None:
            result = execute_job(defs, name, instance, logs / f"{name}.log", **kw)
            res.runs.append(
                {
                    "job": name,
                    "run_id": result.run_id,
                    **({"partition": kw["partition_key"]} if "partition_key" in kw else {}),
                }
            )

        steps = ["extract"] + (["update path"] if update_path else []) + ["transform"]
        bar = Progress(len(steps), "extract+transform")
        t = time.monotonic()
        job(
            "stripe_history_job",
            run_config={"ops": {"extract_history": {"config": {"start": f"{start}-00:00", "end": f"{end}-23:00"}}}},
        )
        bar.advance(f"extracted {start} .. {end}")
        if update_path:
            job("update_path_job")
            bar.advance("update path")
        res.seconds["extract"] = round(time.monotonic() - t, 1)
        res.extracted = _extracted(conninfo, start, end)
        t = time.monotonic()
        job("transform_job")
        bar.advance("transformed and checked")
        res.seconds["transform"] = round(time.monotonic() - t, 1)
        if load:
            # Entries of the window may post after it (a payout's arrival day), so up to today.
            days = automation.days_to_load(conninfo, today=today, first_day=start)
            t = time.monotonic()
            bar = Progress(len(days), "load")
            for d in days:
                job("load_job", partition_key=f"{d:%Y-%m-%d}")
                bar.advance(f"{d}")
            res.days_loaded = [f"{d}" for d in days]
            res.seconds["load"] = round(time.monotonic() - t, 1)
    # What Sage holds for the window: its days and the posting days it loaded (a payout's arrival may follow TO).
    last = max([end, *(date.fromisoformat(d) for d in res.days_loaded)])
    res.postings, res.dead_letters_in_window = _postings(conninfo, start, last)
    res.seconds["total"] = round(time.monotonic() - t0, 1)
    return res


def format_run_summary(res: RunSummary) -> str:
    """The summary printed at the end of `run`."""
    out = [
        "",
        f"RUN {res.window['from']} .. {res.window['to']} (UTC)  took {res.seconds.get('total', 0)} s",
        "  extracted (objects created in the window):",
    ]
    out += [f"    {t:<22} {n:>8}" for t, n in res.extracted.items()]
    out.append(
        f"  posting days loaded: {len(res.days_loaded)}"
        + (f" ({res.days_loaded[0]} .. {res.days_loaded[-1]})" if res.days_loaded else "")
    )
    for resource, by_status in sorted(res.postings.items()):
        out.append(f"    {resource:<18} " + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
    if res.dead_letters_in_window:
        out.append(
            f"  dead letters: {res.dead_letters_in_window} — see sage_sync.dead_letters, fix, then "
            "`stripe-sage redrive`"
        )
    out.append(f"  {len(res.runs)} Dagster runs (see `stripe-sage ui`)")
    return "\n".join(out)


def main_run(args: argparse.Namespace) -> int:
    """Entry point of `stripe-sage run`: 0 when every run succeeded and nothing was dead-lettered, else 1."""
    start, end = parse_day(args.start, "--from"), parse_day(args.end, "--to")
    plan_window(start, end, datetime.now(UTC).date(), "0001-01-01")  # flag mistakes before the slow checks
    echo = (lambda *_: None) if args.json else (lambda line: print(line, flush=True))
    res = run_range(start, end, load=not args.no_load, update_path=not args.skip_update_path, echo=echo)
    if args.json:
        print(json.dumps(asdict(res), indent=1, sort_keys=True))
    else:
        print(format_run_summary(res))
    return 1 if res.dead_letters_in_window else 0
