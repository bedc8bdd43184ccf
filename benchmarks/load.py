"""Benchmark of the load stage against the Sage Pro sandbox over a socket.

1. Throughput: N detail journal entries of one posting date posted with the sandbox limited to
   `--limit` requests/minute (its default is 120) and the client at 95% of it; prints postings/s as a
   fraction of the limit, over the whole run and in steady state (after the first 10 s, i.e. without
   the first window's burst). N = limit/60 × `--seconds`.
2. Requests per payout in payout-summary mode, for payouts sweeping 1, 10, 100 and 1000 charges: a
   summary entry is netted per account, so it is one POST whatever the item count (plus one
   GET /accounts per run).

The data goes through the real path: Stripe-shaped objects into stripe_staging, `dbt build`, then the
posting modules. Uses STRIPE_SAGE_DATABASE_URL's server when set, else the embedded one; works in a
database of its own (`bench_load`), recreated each time.

    python benchmarks/load.py [--limit 600] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import yaml

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DBT_TARGET_PATH", os.path.join(tempfile.gettempdir(), "stripe_sage_bench_load_dbt_target"))

from stripe_sage_pipeline.extract.staging import ensure_schema, upsert_objects, upsert_payout_members  # noqa: E402
from stripe_sage_pipeline.load.post import Poster, load_journal_entries, make_client  # noqa: E402
from stripe_sage_pipeline.runtime.db import database_url, libpq_url  # noqa: E402
from stripe_sage_pipeline.settings import PROJECT_ROOT  # noqa: E402
from stripe_sage_pipeline.transform.build import dbt_build  # noqa: E402
from stripe_sage_pipeline.transform.mapping import parse_mapping  # noqa: E402
from stripe_sage_sandboxes.sage import SageSandboxConfig, SageSandboxServer  # noqa: E402

BENCH_DB = "bench_load"
SIZES = (1, 10, 100, 1000)
PAYOUTS_PER_SIZE = 3


def _server_url(database: str) -> str:
    parts = urlsplit(database_url())
    return urlunsplit(parts._replace(path=f"/{database}"))


def recreate_database() -> str:
    """Drop and create the benchmark database; return its URL."""
    with psycopg.connect(libpq_url(_server_url("postgres")), autocommit=True) as conn:
        conn.execute(f"drop database if exists {BENCH_DB} with (force)")
        conn.execute(f"create database {BENCH_DB}")
    return _server_url(BENCH_DB)


def _ts(day: date, seconds: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) + seconds


def _charge_bt(i: str, amount: int, created: int) -> tuple[dict, dict]:
    fee = amount * 29 // 1000 + 30
    bt = {
        "id": f"txn_{i}",
        "object": "balance_transaction",
        "amount": amount,
        "fee": fee,
        "net": amount - fee,
        "currency": "usd",
        "created": created,
        "available_on": created + 86400,
        "exchange_rate": None,
        "fee_details": [
            {"amount": fee, "currency": "usd", "type": "stripe_fee", "description": "fee", "application": None}
        ],
        "reporting_category": "charge",
        "source": f"ch_{i}",
        "status": "available",
        "type": "charge",
        "description": None,
    }
    ch = {
        "id": f"ch_{i}",
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": 0,
        "balance_transaction": bt["id"],
        "captured": True,
        "created": created,
        "currency": "usd",
        "customer": None,
        "description": f"Order {i}",
        "disputed": False,
        "invoice": None,
        "livemode": False,
        "metadata": {},
        "paid": True,
        "refunded": False,
        "status": "succeeded",
    }
    return bt, ch


def stage(url: str, throughput_n: int) -> tuple[date, dict[int, date]]:
    """Staging objects: `throughput_n` charges on one day, and payouts of growing item counts."""
    bts, charges, payouts, members = [], [], [], {}
    day0 = date(2026, 11, 2)
    for n in range(throughput_n):
        bt, ch = _charge_bt(f"bench{n}", 1000 + (n * 7919) % 90000, _ts(day0, 60 + n))
        bts.append(bt)
        charges.append(ch)
    size_days = {}
    for s, size in enumerate(SIZES):
        arrival = date(2026, 11, 10 + s)
        size_days[size] = arrival
        for p in range(PAYOUTS_PER_SIZE):
            ids, net = [], 0
            for k in range(size):
                bt, ch = _charge_bt(f"p{size}x{p}x{k}", 500 + (k * 104729) % 50000, _ts(arrival, -3 * 86400 + k))
                bts.append(bt)
                charges.append(ch)
                ids.append(bt["id"])
                net += bt["net"]
            po = f"po_bench{size}x{p}"
            own = {
                "id": f"txn_{po}",
                "object": "balance_transaction",
                "amount": -net,
                "fee": 0,
                "net": -net,
                "currency": "usd",
                "created": _ts(arrival, -86400),
                "available_on": _ts(arrival, -86400),
                "exchange_rate": None,
                "fee_details": [],
                "reporting_category": "payout",
                "source": po,
                "status": "available",
                "type": "payout",
                "description": None,
            }
            bts.append(own)
            payouts.append(
                {
                    "id": po,
                    "object": "payout",
                    "amount": net,
                    "arrival_date": _ts(arrival),
                    "automatic": True,
                    "balance_transaction": own["id"],
                    "created": _ts(arrival, -86400),
                    "currency": "usd",
                    "failure_balance_transaction": None,
                    "failure_code": None,
                    "failure_message": None,
                    "method": "standard",
                    "status": "paid",
                    "type": "bank_account",
                    "metadata": {},
                    "description": "STRIPE PAYOUT",
                    "destination": "ba_1",
                }
            )
            members[po] = [*ids, own["id"]]
    with psycopg.connect(libpq_url(url)) as conn:
        ensure_schema(conn)
        upsert_objects(conn, "charges", charges)
        upsert_objects(conn, "balance_transactions", bts)
        upsert_objects(conn, "payouts", payouts)
        for po, ids in members.items():
            upsert_payout_members(conn, po, ids)
        conn.commit()
    return day0, size_days


def _mapping(mode: str, folder: Path):
    data = yaml.safe_load((PROJECT_ROOT / "mapping.yaml").read_text())
    data["posting_mode"] = mode
    path = folder / f"mapping-{mode}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    os.environ["STRIPE_SAGE_MAPPING"] = str(path)
    return parse_mapping(data, str(path))


def _truncate_ledger(url: str) -> None:
    with psycopg.connect(libpq_url(url)) as conn:
        if conn.execute("select to_regclass('sage_sync.posting_ledger') is not null").fetchone()[0]:
            conn.execute("truncate sage_sync.posting_ledger, sage_sync.dead_letter_history")


def throughput(url: str, day: date, limit: int, folder: Path) -> None:
    """Part 1: postings/s against the sandbox's configured limit."""
    mapping = _mapping("detail", folder)
    dbt_build(url=url, mapping=mapping)
    srv = SageSandboxServer(
        SageSandboxConfig(data_dir=folder / "sage-throughput", rate_per_minute=limit, max_concurrent=4)
    ).start()
    client_rate = int(limit * 0.95)
    client, counter = make_client(
        srv.base_url, "pipeline", "pipeline-secret", rate_per_minute=client_rate, max_concurrency=4
    )
    poster = Poster(url, client, workers=4, transport=counter)
    t0 = time.monotonic()
    stats = load_journal_entries(url, poster, day, mapping)
    elapsed = time.monotonic() - t0
    log = [e for e in srv.request_log if e.method == "POST" and e.status == 201]
    rejected = sum(1 for e in srv.request_log if e.status == 429)
    steady = [e.at for e in log if e.at - log[0].at >= 10] if log else []
    steady_rate = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else float("nan")
    poster.close()
    client.close()
    srv.stop()
    limit_s = limit / 60
    print(
        f"\n1. Throughput, detail mode, {stats.created} entries of {day} "
        f"(sandbox limit {limit}/min = {limit_s:.2f} req/s, client at {client_rate}/min, 4 workers)"
    )
    print(f"   {stats.created} posted in {elapsed:.1f} s with {stats.requests} requests ({rejected} answered 429)")
    print(
        f"   postings/s overall      {stats.created / elapsed:6.2f}  = {stats.created / elapsed / limit_s:.3f} of the limit"
    )
    print(
        f"   postings/s steady state {steady_rate:6.2f}  = {steady_rate / limit_s:.3f} of the limit"
        f" (after the first 10 s)"
    )


def per_payout(url: str, size_days: dict[int, date], folder: Path) -> None:
    """Part 2: requests per payout in summary mode as payouts grow."""
    mapping = _mapping("payout_summary", folder)
    dbt_build(url=url, mapping=mapping)
    _truncate_ledger(url)
    srv = SageSandboxServer(
        SageSandboxConfig(data_dir=folder / "sage-summary", rate_per_minute=60_000, max_concurrent=8)
    ).start()
    print(f"\n2. Requests per payout, payout-summary mode ({PAYOUTS_PER_SIZE} payouts per size, one run per size)")
    print("   items/payout  lines/entry  requests  POSTs  requests/payout  POSTs/payout")
    for size, day in size_days.items():
        client, counter = make_client(srv.base_url, "pipeline", "pipeline-secret")
        poster = Poster(url, client, workers=4, transport=counter)
        before = len(srv.request_log)
        stats = load_journal_entries(url, poster, day, mapping)
        posts = sum(1 for e in srv.request_log[before:] if e.method == "POST")
        entry = client.find_by_external_ref("journal-entries", f"po_bench{size}x0")
        print(
            f"   {size:>12}  {len(entry['lines']):>11}  {stats.requests:>8}  {posts:>5}"
            f"  {stats.requests / PAYOUTS_PER_SIZE:>15.2f}  {posts / PAYOUTS_PER_SIZE:>12.2f}"
        )
        poster.close()
        client.close()
    srv.stop()


def main() -> None:
    """Run both parts and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=600, help="sandbox requests/minute (its default is 120)")
    p.add_argument("--seconds", type=int, default=60, help="length of the throughput run")
    args = p.parse_args()
    n = args.limit * args.seconds // 60
    url = recreate_database()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        folder = Path(tmp)
        t0 = time.monotonic()
        day, size_days = stage(url, n)
        print(
            f"staged {n} charges for the throughput run and {len(SIZES) * PAYOUTS_PER_SIZE} payouts"
            f" in {time.monotonic() - t0:.1f} s"
        )
        throughput(url, day, args.limit, folder)
        per_payout(url, size_days, folder)


if __name__ == "__main__":
    main()
