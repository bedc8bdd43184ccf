"""Benchmark of the two load targets side by side: Sage Pro (REST contract) and Sage Intacct (REST API v1).

N detail journal entries of one posting date (the charges of `benchmarks/load.py`'s staging) are posted
through each target's local server over a socket, with the same engine, 4 workers and no client-side
rate limit, then once more (nothing to do), then again from an empty ledger and empty books under
faults (429, 5xx and commit-then-504, each at `--fault-rate`). Prints per target: seconds, requests,
requests per entry, POSTs, duplicates in the books (must be 0) and whether the GL read back ties to
the marts. Intacct's look-before-write is visible as about one extra query per entry.

    python benchmarks/targets.py [--entries 300] [--fault-rate 0.05]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import psycopg

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DBT_TARGET_PATH", os.path.join(tempfile.gettempdir(), "stripe_sage_bench_targets_dbt"))

from load import _mapping, _truncate_ledger, recreate_database, stage  # noqa: E402

from stripe_sage_pipeline.load.engine import Poster  # noqa: E402
from stripe_sage_pipeline.load.loaders import load_journal_entries  # noqa: E402
from stripe_sage_pipeline.runtime.db import libpq_url  # noqa: E402
from stripe_sage_pipeline.sage.factory import make_target_client  # noqa: E402
from stripe_sage_pipeline.sage.readback import gl_movement  # noqa: E402
from stripe_sage_pipeline.settings import load_settings  # noqa: E402
from stripe_sage_pipeline.transform.build import dbt_build  # noqa: E402
from stripe_sage_sandboxes.targets import start_target_sandbox  # noqa: E402


def _books(srv, target: str) -> Counter:
    """External refs of the journal entries the target holds (a count above 1 is a duplicate)."""
    if target == "intacct":
        return Counter(e["referenceNumber"] for e in srv.app.store.books.entries.values())
    client, _ = make_target_client(load_settings(), base_url=srv.base_url)
    try:
        return Counter(e["external_ref"] for e in client.list_all("/journal-entries"))
    finally:
        client.close()


def _mart_movement(url: str, day) -> dict[str, Decimal]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "select account_code, sum(debit - credit) from finance.fct_journal_lines"
            " where is_selected_mode and posting_date = %s group by 1",
            (day,),
        ).fetchall()
    return {code: Decimal(int(net)) / 100 for code, net in rows if net}


def run(url: str, day, target: str, folder: Path, fault_rate: float) -> list[str]:
    out = []
    for label, rate in (("clean", 0.0), ("faults", fault_rate)):
        _truncate_ledger(url)
        srv, _, env = start_target_sandbox(
            target,
            folder / f"{target}-{label}",
            rate_429=rate,
            rate_5xx=rate,
            rate_commit_504=rate,
            retry_after_s=0,
            rate_per_minute=600_000,
        )
        os.environ.update(env)
        client, counter = make_target_client(load_settings(), backoff_base_s=0.01, backoff_cap_s=0.2, max_retries=10)
        poster = Poster(url, client, workers=4, transport=counter)
        t0 = time.monotonic()
        stats = load_journal_entries(url, poster, day)
        seconds = time.monotonic() - t0
        again = load_journal_entries(url, poster, day)
        gl = {k: Decimal(v) for k, v in gl_movement(client).get("usd", {}).items() if Decimal(v)}
        ties = gl == _mart_movement(url, day)
        books = _books(srv, target)
        dupes = sum(n - 1 for n in books.values() if n > 1)
        posts = sum(
            1 for e in srv.request_log if e.method == "POST" and "/query" not in e.path and "/oauth2/" not in e.path
        )
        out.append(
            f"   {target:<8} {label:<7} {stats.posted:>7} {seconds:>8.1f}"
            f" {stats.requests:>9} {stats.requests / max(1, stats.planned):>9.2f} {posts:>6}"
            f" {again.requests:>7} {dupes:>5}  {'yes' if ties else 'NO'}"
        )
        poster.close()
        client.close()
        srv.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=300)
    p.add_argument("--fault-rate", type=float, default=0.05)
    args = p.parse_args()
    url = recreate_database()
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as tmp:
        folder = Path(tmp)
        day, _ = stage(url, args.entries)
        _mapping("detail", folder)
        dbt_build(url=url)
        print(
            f"\nDetail mode, {args.entries} journal entries of {day}; faults: 429, 5xx and commit-then-504 at"
            f" {args.fault_rate:.0%} each; 4 workers"
        )
        print("   target   run      posted  seconds  requests  req/entry  POSTs  re-run  dupes  GL ties")
        for target in ("sagepro", "intacct"):
            for line in run(url, day, target, folder, args.fault_rate):
                print(line)


if __name__ == "__main__":
    main()
