"""`stripe-sage redrive`: re-drive the dead letters after a fix, and print what happened to each."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from stripe_sage_pipeline.load.ledger import SCHEMA
from stripe_sage_pipeline.load.redrive import redrive
from stripe_sage_pipeline.runtime.db import database_url
from stripe_sage_pipeline.sage.factory import make_target_client
from stripe_sage_pipeline.settings import load_settings

DEFAULT_SAGE_URL = "http://127.0.0.1:8765/sagepro/v1/PRO01"


def build_parser() -> argparse.ArgumentParser:
    """Options of `stripe-sage redrive`."""
    p = argparse.ArgumentParser(prog="stripe-sage redrive", description=(
        f"Re-plan and post every dead letter in {SCHEMA}.dead_letters (after opening a period, fixing the"
        " mapping and rebuilding the marts, or fixing a custno)."))
    p.add_argument("--resource", action="append", choices=["customers", "invoices", "cash-receipts", "journal-entries"],
                   help="only this Sage resource (repeatable)")
    p.add_argument("--ref", action="append", help="only this external_ref (repeatable)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    return p


def redrive_main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when every re-driven item is posted now, 1 when some failed again."""
    args = build_parser().parse_args(argv)
    s = load_settings()
    url = database_url(s)
    client, transport = make_target_client(s, rate_per_minute=s.intacct_rate_per_minute if s.sage_target == "intacct"
                                           else 110)
    try:
        res = redrive(url, client, resources=args.resource, refs=args.ref)
    finally:
        client.close()
    if args.json:
        print(json.dumps({"items": res.items, "posted": res.posted, "still_dead": res.still_dead,
                          "requests": transport.count}, indent=1, default=str))
    elif not res.items:
        print("No dead letters to re-drive.")
    else:
        for i in res.items:
            now = i["status_now"] + (f" as {i['sage_id']}" if i["sage_id"] and i["status_now"] == "posted" else "")
            if i["reason_now"]:
                now += f" (again: {i['reason_now']})"
            print(f"{i['resource']:<16} {i['external_ref']:<32} was {i['reason_was'] or '?':<22} -> {now}")
        print(f"Re-drove {len(res.items)} dead letter(s): {res.posted} posted, {res.still_dead} still dead-lettered;"
              f" {transport.count} Sage requests.")
    return 0 if res.still_dead == 0 else 1


if __name__ == "__main__":
    sys.exit(redrive_main())
