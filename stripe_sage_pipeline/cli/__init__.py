"""The `stripe-sage` command line (stable: scripts and tests rely on it)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _quiet_defaults() -> None:
    os.environ.setdefault("DAGSTER_TELEMETRY_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the subcommand."""
    _quiet_defaults()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="stripe-sage", description="Stripe → Postgres → dbt → Sage Pro, on Dagster")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline on embedded defaults and print a summary")
    demo.add_argument("--days", type=int, default=30)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--load", type=Path, help="Stripe objects in the layout of examples/payout_worked_example.json")
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    demo.add_argument("--target", choices=["sagepro", "intacct"], default=None,
                      help="post to the Sage Pro sandbox (default) or the Sage Intacct emulator (SAGE_TARGET)")
    demo.add_argument("--posting-mode", choices=["detail", "payout_summary"],
                      help="post in this mode instead of the mapping's (a copy of the mapping is used)")

    ui = sub.add_parser("ui", help="Dagster webserver and daemon on the embedded defaults")
    ui.add_argument("--port", type=int, default=3000)
    ui.add_argument("--host", default="127.0.0.1")

    sandbox = sub.add_parser("sandbox", help="run a sandbox server in the foreground")
    sandbox.add_argument("which", choices=["stripe", "sage", "intacct"])
    sub.add_parser("webhooks", help="the Stripe webhook receiver (stores events in the inbox)", add_help=False)
    sub.add_parser("redrive", help="re-drive the dead letters after a fix (each posts once)", add_help=False)
    sub.add_parser("mapping", help="the mapping studio in the browser (127.0.0.1:3100)", add_help=False)

    if argv[:1] == ["sandbox"] and len(argv) >= 2:
        # The sandboxes own their flags; pass everything after the name straight through.
        which, rest = argv[1], argv[2:]
        if which == "stripe":
            from stripe_sage_sandboxes.stripe_emulator.server import main as stripe_main

            return stripe_main(rest) or 0
        if which == "sage":
            from stripe_sage_sandboxes.sage.server import main as sage_main

            return sage_main(rest) or 0
        if which == "intacct":
            from stripe_sage_sandboxes.intacct.server import main as intacct_main

            return intacct_main(rest) or 0

    if argv[:1] == ["webhooks"]:
        from stripe_sage_pipeline.extract.webhooks import main as webhooks_main

        return webhooks_main(argv[1:]) or 0
    if argv[:1] == ["redrive"]:
        from stripe_sage_pipeline.cli.redrive import redrive_main

        return redrive_main(argv[1:]) or 0

    if argv[:1] == ["mapping"]:
        from stripe_sage_pipeline.studio.server import main as studio_main

        return studio_main(argv[1:]) or 0

    args = parser.parse_args(argv)
    if args.command == "demo":
        from stripe_sage_pipeline.cli.demo import main_demo

        return main_demo(args.days, args.seed, args.load, args.json, target=args.target, posting_mode=args.posting_mode)
    if args.command == "ui":
        from stripe_sage_pipeline.cli.ui import run_ui

        return run_ui(args.host, args.port)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
