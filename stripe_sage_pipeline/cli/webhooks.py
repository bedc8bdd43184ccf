"""`stripe-sage webhooks`: the receiver, announced only once the database answered and the port is bound."""

from __future__ import annotations

import argparse
import logging
import threading

import psycopg

from stripe_sage_pipeline.extract.webhooks import WEBHOOK_PATH, WebhookServer, ensure_inbox
from stripe_sage_pipeline.runtime.db import database_url, libpq_url
from stripe_sage_pipeline.settings import SANDBOX_WEBHOOK_SECRET, load_settings


def main_webhooks(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Check the inbox table, bind the port, then serve until Ctrl-C (or until `stop` is set, for tests)."""
    settings = load_settings()
    conninfo = libpq_url(database_url(settings))
    with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
        ensure_inbox(conn)
    server = WebhookServer(conninfo, settings.stripe_webhook_secret, host=args.host, port=args.port).start()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secret = (
        "the emulator's default (set STRIPE_WEBHOOK_SECRET to your endpoint's signing secret)"
        if settings.stripe_webhook_secret == SANDBOX_WEBHOOK_SECRET
        else "STRIPE_WEBHOOK_SECRET"
    )
    print(
        f"Stripe webhook receiver on {server.url}{WEBHOOK_PATH} (signing secret: {secret}); "
        "register https://<your public address>" + WEBHOOK_PATH + " in Stripe. Ctrl-C stops it.",
        flush=True,
    )
    try:
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
