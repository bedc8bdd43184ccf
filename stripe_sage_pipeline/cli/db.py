"""`stripe-sage db start|stop|status`: the embedded PostgreSQL server the demo and the UI use."""

from __future__ import annotations

import argparse
import json

from stripe_sage_pipeline.cli.errors import CommandError
from stripe_sage_pipeline.runtime.embedded_pg import EmbeddedPostgres
from stripe_sage_pipeline.settings import load_settings


def main_db(args: argparse.Namespace) -> int:
    """start: 0 once it listens; stop: 0 (also when it was not running); status: 0 running, 3 stopped."""
    s = load_settings()
    if not s.embedded:
        raise CommandError(
            "STRIPE_SAGE_DATABASE_URL is set, so the embedded server is not used — manage that "
            "server yourself, or unset the variable"
        )
    pg = EmbeddedPostgres(s.data_dir, s.embedded_pg_port)
    if args.action == "start":
        was_running = pg.status()["running"]
        pg.start()
        print(
            f"embedded PostgreSQL {'already running' if was_running else 'started'} on 127.0.0.1:{pg.port}: "
            f"psql postgresql://postgres@127.0.0.1:{pg.port}/stripe_sage"
        )
        return 0
    if args.action == "stop":
        print("embedded PostgreSQL stopped" if pg.stop() else "embedded PostgreSQL was not running")
        return 0
    st = pg.status()
    if args.json:
        print(json.dumps(st, indent=1))
    elif st["running"]:
        print(
            f"running on 127.0.0.1:{st['port']} (pid {st['pid']}, user {st['user']}); cluster {st['cluster']}; "
            f"log {st['log']}"
        )
    else:
        state = "stopped" if st["initialised"] else "not created yet"
        print(f"{state} ({st['data_dir']}); `stripe-sage db start` starts it on 127.0.0.1:{st['port']}")
    return 0 if st["running"] else 3
