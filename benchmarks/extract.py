"""Extraction benchmark: Stripe emulator in its own process → extractor → embedded Postgres.

Prints, for the whole pipeline of `extract_window` (SDK requests, row conversion, COPY + upsert):
  * objects/s end to end with no rate limit, over >= 200k balance transactions with their charges;
  * the achieved request rate as a fraction of the limit at 25 and 100 req/s (the emulator enforcing
    the same limit, so a 429 would show up as lost rate);
  * peak RSS of the extracting process at two data sizes (should not grow with the data).

Usage: python benchmarks/extract.py [--volume 60] [--days 30]
"""

from __future__ import annotations

import argparse
import json
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


def start_emulator(volume: float, days: int, end: int) -> tuple[subprocess.Popen, str, dict]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stripe_sage_sandboxes.stripe_emulator", "--port", str(port),
         "--seed", "1", "--days", str(days), "--volume", str(volume), "--end", str(end)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            summary = admin(url, "/_emulator/summary")
            return proc, url, summary
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("emulator did not start")


def admin(url: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


WORKER = r"""
import json, resource, sys, time
from stripe_sage_pipeline.extract import extract
from stripe_sage_pipeline.extract.client import StripeReader
from stripe_sage_pipeline.extract.staging import ensure_schema
import psycopg
args = json.loads(sys.argv[1])
with psycopg.connect(args["db"]) as c:
    ensure_schema(c)
r = StripeReader("sk_test_emulator", args["url"], rate_limit_per_s=args["rate"])
t0 = time.monotonic()
rows = 0
if args.get("max_requests"):
    # Rate probe: as many threads as extraction uses page through charges until max_requests went out.
    from concurrent.futures import ThreadPoolExecutor
    def probe(i):
        for _ in r.iter_pages("/v1/charges", {"created": {"gte": args["start"] + i * 86400, "lt": args["end"]}}):
            if r.stats.requests >= args["max_requests"]:
                return
    with ThreadPoolExecutor(args["workers"]) as pool:
        list(pool.map(probe, range(args["workers"])))
else:
    for t in args["tables"]:
        rows += extract.extract_window(r, args["db"], t, args["start"], args["end"], workers=args["workers"]).rows
dt = time.monotonic() - t0
print(json.dumps({"rows": rows, "seconds": dt, "requests": r.stats.requests, "rate_limited": r.stats.rate_limited,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def run_worker(args: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(args)], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_db(pg: EmbeddedPostgres, name: str) -> str:
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'drop database if exists "{name}"')
        c.execute(f'create database "{name}"')
    return f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--volume", type=float, default=60.0, help="generator volume (60 ≈ 200k balance transactions / 30 days)")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--workers", type=int, default=8)
    a = ap.parse_args()
    end = 1_790_000_000 - 1_790_000_000 % 86400  # fixed, so figures are comparable between runs
    start = end - a.days * 86400
    tmp = Path(tempfile.mkdtemp(prefix="ssp-bench-extract-"))
    pg = EmbeddedPostgres(tmp, free_port()).start()
    results: dict[str, object] = {}
    try:
        for label, volume in (("small", a.volume / 4), ("large", a.volume)):
            proc, url, summary = start_emulator(volume, a.days, end)
            try:
                n_bt = summary["counts"]["balance_transactions"]
                n_ch = summary["counts"]["charges"]
                db = fresh_db(pg, f"bench_{label}")
                res = run_worker({"db": db, "url": url, "rate": None, "tables": ["balance_transactions", "charges"],
                                  "start": start, "end": end + 86400, "workers": a.workers})
                results[label] = {"balance_transactions": n_bt, "charges": n_ch, **res,
                                  "objects_per_s": round(res["rows"] / res["seconds"])}
                print(f"[{label}] {res['rows']:,} objects ({n_bt:,} balance transactions + {n_ch:,} charges) in "
                      f"{res['seconds']:.1f} s = {res['rows'] / res['seconds']:,.0f} objects/s, "
                      f"{res['requests']:,} requests, peak RSS {res['maxrss_kb'] / 1024:.0f} MiB", flush=True)
                if label == "large":
                    for limit in (25, 100):
                        admin(url, "/_emulator/config", {"rate_limit_per_s": limit})
                        before = admin(url, "/_emulator/requests")
                        n = limit * 12
                        probe = run_worker({"db": db, "url": url, "rate": limit, "max_requests": n, "workers": a.workers,
                                            "start": start, "end": end + 86400})
                        after = admin(url, "/_emulator/requests")
                        achieved = probe["requests"] / probe["seconds"]
                        served_429 = after.get("rate_limited", 0) - before.get("rate_limited", 0)
                        results[f"rate_{limit}"] = {"achieved_per_s": round(achieved, 2), "fraction": round(achieved / limit, 3),
                                                    "429_served": served_429, "429_seen_by_client": probe["rate_limited"]}
                        print(f"[limit {limit}/s] {probe['requests']} requests in {probe['seconds']:.2f} s = "
                              f"{achieved:.2f} req/s = {achieved / limit:.3f} of the limit; 429s served {served_429}",
                              flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        small, large = results["small"], results["large"]
        print("\nSummary")
        print(f"  objects/s, no rate limit (large): {large['objects_per_s']:,}   goal >= 5,000")
        print(f"  fraction of limit at 25/s: {results['rate_25']['fraction']}   at 100/s: {results['rate_100']['fraction']}   goal >= 0.9")
        print(f"  peak RSS: {small['maxrss_kb'] / 1024:.0f} MiB at {small['rows']:,} objects, "
              f"{large['maxrss_kb'] / 1024:.0f} MiB at {large['rows']:,} objects "
              f"(ratio {large['maxrss_kb'] / small['maxrss_kb']:.2f} for {large['rows'] / small['rows']:.1f}x the data)")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
