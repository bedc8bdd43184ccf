"""The `stripe-sage` command line (stable: scripts and tests rely on it).

Each command is one `_add_<name>` function below: its flags, each with its help, and its handler named
as "module:function" (imported only when that command runs, so `--help` and `db status` stay fast).
A handler takes the parsed arguments and returns the exit status. A new flag is one `add_argument`
line; a new command is one function and one entry in `COMMANDS`; a new sandbox one entry in `SANDBOXES`.

Every failure a command can expect is printed as one line (cause — fix) by `cli/errors.py`;
`--verbose` prints the traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from stripe_sage_pipeline.cli.errors import OneLineParser, explain

# The sandboxes own their flags (`stripe-sage sandbox stripe --help` shows them): name -> "module:function(argv)".
SANDBOXES = {
    "stripe": "stripe_sage_sandboxes.stripe_emulator.server:main",
    "sage": "stripe_sage_sandboxes.sage.server:main",
    "intacct": "stripe_sage_sandboxes.intacct.server:main",
}
# Commands that own their flags too: name -> (help, "module:function(argv)").
OWN_FLAGS = {
    "mapping": ("the mapping studio in the browser (127.0.0.1:3100)", "stripe_sage_pipeline.studio.server:main"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stripe-sage-pipeline")
    except PackageNotFoundError:  # run from a tree that was never pip-installed
        return "unknown"


def _handler(p: argparse.ArgumentParser, target: str) -> argparse.ArgumentParser:
    p.set_defaults(handler=target)
    return p


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on embedded defaults and print a summary",
        description="Start the embedded PostgreSQL, the Stripe emulator and the Sage Pro sandbox, run "
        "extract → transform → load through the Dagster jobs, and print a summary for a controller. "
        "Runs `stripe-sage doctor`'s local checks first.",
    )
    p.add_argument(
        "--days",
        type=int,
        default=30,
        metavar="N",
        help="days of generated Stripe history, ending today 00:00 UTC (default: 30)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=7,
        metavar="N",
        help="random seed of the generated history; the same seed gives the same objects (default: 7)",
    )
    p.add_argument(
        "--load",
        type=Path,
        metavar="FILE",
        help="serve the Stripe objects of FILE (layout of examples/payout_worked_example.json) "
        "instead of generating a history",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument(
        "--target",
        choices=["sagepro", "intacct"],
        default=None,
        help="post to the Sage Pro sandbox (default) or the Sage Intacct emulator (SAGE_TARGET)",
    )
    p.add_argument(
        "--posting-mode",
        choices=["detail", "payout_summary"],
        help="post in this mode instead of the mapping's (a copy of the mapping is used)",
    )
    _handler(p, "stripe_sage_pipeline.cli.demo:main_demo_args")


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="extract → transform → load a date range against the configured endpoints",
        description="Run the pipeline for the UTC days FROM..TO (inclusive) against the configured "
        "Stripe, Sage Pro and database, through the same Dagster jobs and instance as the UI: one "
        "history extraction, the update path, the transform with its checks, then one load run per "
        "posting day from FROM up to today that has entries Sage has not seen (a payout posts on its "
        "arrival day, which may follow TO). Checks the set-up first "
        "(`stripe-sage doctor`). A second run of the same range posts nothing new.",
    )
    p.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD", help="first UTC day to extract")
    p.add_argument(
        "--to",
        dest="end",
        required=True,
        metavar="YYYY-MM-DD",
        help="last UTC day to extract (inclusive; at most today)",
    )
    p.add_argument("--no-load", action="store_true", help="extract and transform only; post nothing to Sage Pro")
    p.add_argument(
        "--skip-update-path",
        action="store_true",
        help="skip the Events API pass (changes to older objects) after the extraction",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    _handler(p, "stripe_sage_pipeline.cli.run:main_run")


def _add_doctor(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="check the set-up: mapping, database, Dagster home, Stripe, Sage Pro",
        description="One line per check (✓ or ✗ with what to do). Exit status 0 when every check "
        "passes, 1 otherwise. Starts the embedded PostgreSQL when no STRIPE_SAGE_DATABASE_URL is set.",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=["mapping", "database", "dagster", "stripe", "sage"],
        help="run only this check (repeatable)",
    )
    _handler(p, "stripe_sage_pipeline.cli.doctor:main_doctor")


def _add_db(sub) -> None:
    p = sub.add_parser(
        "db",
        help="start, stop or show the embedded PostgreSQL server",
        description="The embedded server lives in STRIPE_SAGE_DATA_DIR (default ./.data) and listens "
        "on 127.0.0.1:STRIPE_SAGE_PG_PORT (default 54329). Not used when STRIPE_SAGE_DATABASE_URL is set.",
    )
    p.add_argument(
        "action",
        choices=["start", "stop", "status"],
        help="start: initialise if needed and start; stop: fast shutdown; status: running or not, where",
    )
    p.add_argument("--json", action="store_true", help="status as one JSON object")
    _handler(p, "stripe_sage_pipeline.cli.db:main_db")


def _add_ui(sub) -> None:
    p = sub.add_parser(
        "ui",
        help="the Dagster webserver and daemon (schedules, sensors, backfills)",
        description="Checks the database and the Dagster home, starts dagster-daemon and "
        "dagster-webserver with the project's workspace, and prints the URL once it answers. "
        "Ctrl-C stops both.",
    )
    p.add_argument("--port", type=int, default=3000, help="webserver port (default: 3000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    _handler(p, "stripe_sage_pipeline.cli.ui:main_ui")


def _add_webhooks(sub) -> None:
    p = sub.add_parser(
        "webhooks",
        help="the Stripe webhook receiver (stores events in the inbox)",
        description="Receives Stripe webhooks at POST /stripe/webhooks, verifies them with the "
        "endpoint's signing secret STRIPE_WEBHOOK_SECRET, and stores them in "
        "stripe_staging.webhook_inbox for the inbox sensor. Register https://<your public "
        "address>/stripe/webhooks in Stripe (Developers → Webhooks) and put its signing secret in "
        "STRIPE_WEBHOOK_SECRET. Without a public address set STRIPE_SAGE_EVENTS_SOURCE=events_api.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="port to listen on (default: 8787)")
    _handler(p, "stripe_sage_pipeline.cli.webhooks:main_webhooks")


def _add_redrive(sub) -> None:
    p = sub.add_parser(
        "redrive",
        help="re-drive the dead letters after a fix (each posts once)",
        description="Re-plan and post every dead letter in sage_sync.dead_letters (after opening a "
        "period, fixing the mapping and rebuilding the marts, or fixing a custno). Posts to "
        "SAGEPRO_BASE_URL as SAGEPRO_USER/SAGEPRO_PASSWORD; reads STRIPE_SAGE_DATABASE_URL (or the "
        "embedded server). Exit status 0 when every item is posted now, 1 when some failed again.",
    )
    p.add_argument(
        "--resource",
        action="append",
        choices=["customers", "invoices", "cash-receipts", "journal-entries"],
        help="only this Sage resource (repeatable)",
    )
    p.add_argument("--ref", action="append", metavar="EXTERNAL_REF", help="only this external_ref (repeatable)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    _handler(p, "stripe_sage_pipeline.cli.redrive:main_redrive")


def _add_sandbox(sub) -> None:
    p = sub.add_parser(
        "sandbox",
        help="run a sandbox server in the foreground (`sandbox NAME --help` for its flags)",
        description="The project's local stand-ins for Stripe, Sage Pro and Sage Intacct, as real HTTP servers.",
    )
    p.add_argument("which", choices=sorted(SANDBOXES), help="which sandbox")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the sandbox's own flags")
    _handler(p, "stripe_sage_pipeline.cli:_run_sandbox")


def _add_own_flags(sub) -> None:
    for name, (help_, _) in OWN_FLAGS.items():
        p = sub.add_parser(name, help=f"{help_} (`{name} --help` for its flags)", add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER, help="the command's own flags")


COMMANDS: tuple[Callable, ...] = (
    _add_demo,
    _add_run,
    _add_doctor,
    _add_db,
    _add_ui,
    _add_webhooks,
    _add_redrive,
    _add_sandbox,
    _add_own_flags,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole `stripe-sage` parser."""
    parser = OneLineParser(
        prog="stripe-sage",
        description="Stripe → Postgres → dbt → Sage Pro, on Dagster. "
        "Settings come from the environment (see .env.example); `stripe-sage doctor` checks them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for add in COMMANDS:
        add(sub)
    return parser


def _run_sandbox(args: argparse.Namespace) -> int:
    return _call(SANDBOXES[args.which], args.args) or 0


def _run_own_flags(args: argparse.Namespace) -> int:
    return _call(args.target, args.args) or 0


def _call(target: str, arg):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(arg)


def _quiet_defaults() -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")  # Dagster's notes on its own APIs
    os.environ.setdefault("DAGSTER_TELEMETRY_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the subcommand; expected failures print one line (exit 1)."""
    _quiet_defaults()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `sandbox NAME …`: everything after the name belongs to the sandbox, --help included.
    lead = 0
    while lead < len(argv) and argv[lead] in ("-v", "--verbose"):
        lead += 1
    rest = argv[lead:]
    if rest[:1] == ["sandbox"] and len(rest) >= 2 and rest[1] in SANDBOXES:
        args = argparse.Namespace(
            command="sandbox",
            which=rest[1],
            args=rest[2:],
            verbose=lead > 0,
            handler="stripe_sage_pipeline.cli:_run_sandbox",
        )
    elif rest[:1] and rest[0] in OWN_FLAGS:
        args = argparse.Namespace(
            command=rest[0],
            args=rest[1:],
            target=OWN_FLAGS[rest[0]][1],
            verbose=lead > 0,
            handler="stripe_sage_pipeline.cli:_run_own_flags",
        )
    else:
        args = build_parser().parse_args(argv)
    try:
        return _call(args.handler, args) or 0
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except Exception as exc:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"stripe-sage {args.command}: {explain(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
