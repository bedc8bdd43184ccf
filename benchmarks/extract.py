"""Extraction benchmark: Stripe emulator in its own process → extractor → embedded Postgres.

For every table the history job extracts (customers, charges, refunds, disputes, payouts with their
`?payout=` membership, balance transactions, invoices), over one window, with the emulator answering
after `--latency-ms` 300 and 0 and enforcing a 100 and a 25 req/s limit (the client keeps the same limit):

  * busy: the fraction of the limit kept busy (requests sent / (seconds x limit)); goal >= 0.9 at 300 ms;
  * objects/s staged (Stripe objects + payout membership rows);
  * requests per 1,000 staged objects, and against the floor: every list needed (one per table, one
    per automatic payout's membership) at 100 objects a page, ceil(n / 100) requests each; goal within 10%;
  * 429s the emulator served, CPU seconds and peak RSS of the extracting process;
  * and, unless `--no-ceiling`, objects/s with no limit at 0 ms and 64 in flight: what the machine can stage. When
    100 req/s x objects per request is above it, the 100 req/s busy fraction is bound by CPU, not by
    the requests in flight (2 shared cores also run the emulator and Postgres).

`--baseline DIR` runs the same measurements with the extractor found in DIR as well (e.g. the code
before a change: `git archive <commit> stripe_sage_pipeline | tar -x -C DIR`), for before/after figures.

Usage: python benchmarks/extract.py [--volume 10] [--days 30] [--baseline DIR] [--latencies 300,0] [--limits 100,25] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stripe_sage_pipeline.runtime.embedded_pg import EmbeddedPostgres, free_port  # noqa: E402

KEY = "sk_test_emulator"
TABLES = ["customers", "charges", "refunds", "disputes", "payouts", "balance_transactions", "invoices"]


def start_emulator(volume: float, days: int, end: int) -> tuple[subprocess.Popen, str, dict]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stripe_sage_sandboxes.stripe_emulator",
            "--port",
            str(port),
            "--seed",
            "1",
            "--days",
            str(days),
            "--volume",
            str(volume),
            "--end",
            str(end),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            summary = admin(url, "/_emulator/summary")
            warm_up(url)
            return proc, url, summary
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("emulator did not start")


def warm_up(url: str) -> None:
    """One page of each table at the API version the extractor requests, before any measurement.

    The emulator builds its index for rendering current API versions on the first such request (~0.4 s
    at volume 10); real Stripe has no such start-up, so it is paid here, not by the first measurement.
    """
    from stripe_sage_pipeline.settings import load_settings

    version = load_settings().stripe_api_version
    for table in TABLES:
        req = urllib.request.Request(
            f"{url}/v1/{table}?limit=1", headers={"Authorization": f"Bearer {KEY}", "Stripe-Version": version}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()


def admin(url: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


WORKER = r"""
import json, resource, sys, time
import psycopg
from stripe_sage_pipeline.extract import extract
from stripe_sage_pipeline.extract.client import StripeReader
from stripe_sage_pipeline.extract.staging import ensure_schema
args = json.loads(sys.argv[1])
with psycopg.connect(args["db"]) as c:
    ensure_schema(c)
r = StripeReader("sk_test_emulator", args["url"], rate_limit_per_s=args["rate"])
t0 = time.monotonic()
info = {}
if hasattr(extract, "extract_windows"):
    res = extract.extract_windows(r, args["db"], args["tables"], args["start"], args["end"], workers=args.get("workers"))
    assert not res.errors, res.errors
    info = {"in_flight": res.in_flight, "chunks": res.chunks, "pieces_taken": getattr(res, "pieces_taken", "-")}
else:  # the extractor before extract_windows: table after table
    for t in args["tables"]:
        extract.extract_window(r, args["db"], t, args["start"], args["end"])
dt = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": dt, "requests": r.stats.requests, "rate_limited": r.stats.rate_limited,
                  "maxrss_kb": ru.ru_maxrss, "cpu_s": ru.ru_utime + ru.ru_stime, **info}))
"""


def run_worker(args: dict, code_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_dir), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(args)], cwd=code_dir, capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_db(pg: EmbeddedPostgres, name: str) -> str:
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'drop database if exists "{name}"')
        c.execute(f'create database "{name}"')
    return f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"


def staged(db: str) -> tuple[int, int]:
    """(objects staged incl. membership rows, the floor: ceil(n/100) per list needed)."""
    import psycopg

    with psycopg.connect(db) as c:
        per_table = [c.execute(f"select count(*) from stripe_staging.{t}").fetchone()[0] for t in TABLES]
        members = [
            n
            for (n,) in c.execute(
                "select count(m.balance_transaction_id) from stripe_staging.payouts p left join "
                "stripe_staging.payout_balance_transactions m on m.payout_id = p.id where p.automatic group by p.id"
            )
        ]
    pages = sum(max(1, -(-n // 100)) for n in per_table + members)
    return sum(per_table) + sum(members), pages


def measure(
    label: str,
    code_dir: Path,
    pg: EmbeddedPostgres,
    url: str,
    latency: int,
    limit: float | None,
    start: int,
    end: int,
    workers: int | None = None,
) -> dict:
    admin(url, "/_emulator/config", {"latency_ms": latency, "rate_limit_per_s": limit or None})
    before = admin(url, "/_emulator/requests")
    db = fresh_db(pg, f"bench_{label}_{latency}_{int(limit or 0)}")
    res = run_worker(
        {"db": db, "url": url, "rate": limit, "tables": TABLES, "start": start, "end": end, "workers": workers},
        code_dir,
    )
    after = admin(url, "/_emulator/requests")
    objects, floor = staged(db)
    row = {
        "label": label,
        "latency_ms": latency,
        "limit": limit,
        **res,
        "objects": objects,
        "floor": floor,
        "served": after["total"] - before["total"],
        "429": after["rate_limited"] - before["rate_limited"],
    }
    row["busy"] = round(res["requests"] / res["seconds"] / limit, 3) if limit else "-"
    row["objects_per_s"] = round(objects / res["seconds"])
    row["per_1000"] = round(1000 * res["requests"] / objects, 2)
    row["vs_floor"] = round(res["requests"] / floor, 3)
    row["cpu_per_1000"] = round(1000 * res["cpu_s"] / objects, 3)
    busy = f"{row['busy']:.3f} of the limit" if limit else "no limit"
    print(
        f"[{label:8}] {latency:>3} ms, {str(int(limit)) + '/s' if limit else 'unlimited':>9}: {busy}, "
        f"{row['objects_per_s']:,} objects/s, {res['requests']} requests for {objects:,} objects = "
        f"{row['per_1000']} per 1,000 ({row['vs_floor']:.3f} x the floor of {floor}), 429s {row['429']}, "
        f"in flight {res.get('in_flight', '-')}, chunks cut at the end {res.get('pieces_taken', '-')}, {res['seconds']:.1f} s, {row['cpu_per_1000']} CPU s per 1,000 objects, "
        f"peak RSS {res['maxrss_kb'] / 1024:.0f} MiB",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--volume", type=float, default=10.0, help="generator volume (10 ≈ 100k objects over 30 days)")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--latencies", default="300,0")
    ap.add_argument("--limits", default="100,25")
    ap.add_argument("--baseline", type=Path, default=None, help="a folder with the extractor to compare against")
    ap.add_argument("--baseline-runs", default="300:100", help="latency:limit pairs measured for the baseline")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the unthrottled run at 0 ms")
    ap.add_argument(
        "--repeat", type=int, default=1, help="run the baseline and this extractor's measurements N times, alternating"
    )
    a = ap.parse_args()
    end = 1_790_000_000 - 1_790_000_000 % 86400  # fixed, so figures are comparable between runs
    start = end - (a.days + 1) * 86400  # the generated days (older customers are outside the window)
    tmp = Path(tempfile.mkdtemp(prefix="ssp-bench-extract-"))
    pg = EmbeddedPostgres(tmp, free_port()).start()
    rows = []
    try:
        proc, url, summary = start_emulator(a.volume, a.days, end)
        try:
            print("emulator:", ", ".join(f"{n:,} {k}" for k, n in summary["counts"].items()), flush=True)
            for _ in range(max(1, a.repeat)):  # one host phase touches both extractors alike
                if a.baseline:
                    for pair in a.baseline_runs.split(","):
                        lat, lim = pair.split(":")
                        rows.append(
                            measure("baseline", a.baseline, pg, url, int(lat), float(lim) or None, start, end + 86400)
                        )
                for lat in (int(x) for x in a.latencies.split(",")):
                    for lim in (float(x) for x in a.limits.split(",")):
                        rows.append(measure("this", ROOT, pg, url, lat, lim, start, end + 86400))
            if not a.no_ceiling:  # what this machine can stage with no limit at all: the ceiling of "busy" at 100/s
                rows.append(measure("ceiling", ROOT, pg, url, 0, None, start, end + 86400, workers=64))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # half a GB of Postgres data per run
    load = os.getloadavg()[0]
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["limit"]:
            runs.setdefault((r["label"], r["latency_ms"], r["limit"]), []).append(r)
    for (label, lat, lim), rs in runs.items():
        if len(rs) > 1:
            busy = sorted(r["busy"] for r in rs)
            secs = sorted(round(r["seconds"], 1) for r in rs)
            print(
                f"{label} at {lat} ms, {int(lim)}/s over {len(rs)} runs: busy {busy[0]}-{busy[-1]} "
                f"(median {busy[len(busy) // 2]}), {secs[0]}-{secs[-1]} s"
            )
    print(
        f"\nload average at the end: {load:.1f} (a busy machine lowers objects/s and, at 100 req/s, the busy fraction)"
    )
    print(
        "| extractor | latency | limit | busy | objects/s | requests / 1,000 objects | x floor | 429s | CPU s / 1,000 objects | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['label']} | {r['latency_ms']} ms | {str(int(r['limit'])) + '/s' if r['limit'] else 'none'} | {r['busy']} | {r['objects_per_s']:,} | "
            f"{r['per_1000']} | {r['vs_floor']} | {r['429']} | {r['cpu_per_1000']} | {r['maxrss_kb'] / 1024:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
