"""`stripe-sage redrive`: re-drive the dead letters after a fix, and print what happened to each."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from stripe_sage_pipeline.cli.checks import run_checks
from stripe_sage_pipeline.cli.errors import CommandError
from stripe_sage_pipeline.load.redrive import redrive
from stripe_sage_pipeline.runtime.db import database_url
from stripe_sage_pipeline.sage.factory import make_target_client
from stripe_sage_pipeline.settings import load_settings

DEFAULT_SAGE_URL = "http://127.0.0.1:8765/sagepro/v1/PRO01"


def redrive_main(argv: Sequence[str] | None = None) -> int:
    """`stripe-sage redrive ARGS` from Python: 0 when every re-driven item is posted now, 1 when some failed again."""
    from stripe_sage_pipeline.cli import build_parser

    return main_redrive(build_parser().parse_args(["redrive", *(argv or [])]))


def main_redrive(args: argparse.Namespace) -> int:
    """Entry point: 0 when every re-driven item is posted now, 1 when some failed again."""
    s = load_settings()
    # The database and the target first: a wrong URL or password is one line, not a run of retries.
    checked = dataclasses.replace(s, sagepro_base_url=s.sagepro_base_url or DEFAULT_SAGE_URL)
    for result in run_checks(checked, only=["database", "sage"], stop_at_failure=True):
        if not result.ok:
            raise CommandError(result.detail)
    url = database_url(s)
    client, transport = make_target_client(
        s, rate_per_minute=s.intacct_rate_per_minute if s.sage_target == "intacct" else 110
    )
    try:
        res = redrive(url, client, resources=args.resource, refs=args.ref)
    finally:
        client.close()
    if args.json:
        print(
            json.dumps(
                {"items": res.items, "posted": res.posted, "still_dead": res.still_dead, "requests": transport.count},
                indent=1,
                default=str,
            )
        )
    elif not res.items:
        print("No dead letters to re-drive.")
    else:
        for i in res.items:
            now = i["status_now"] + (f" as {i['sage_id']}" if i["sage_id"] and i["status_now"] == "posted" else "")
            if i["reason_now"]:
                now += f" (again: {i['reason_now']})"
            print(f"{i['resource']:<16} {i['external_ref']:<32} was {i['reason_was'] or '?':<22} -> {now}")
        print(
            f"Re-drove {len(res.items)} dead letter(s): {res.posted} posted, {res.still_dead} still dead-lettered;"
            f" {transport.count} Sage requests."
        )
    return 0 if res.still_dead == 0 else 1


if __name__ == "__main__":
    sys.exit(redrive_main(sys.argv[1:]))
