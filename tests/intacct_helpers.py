"""Helpers for the Intacct tests: an emulator over a socket and an adapter with fast retries."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from stripe_sage_pipeline.sage.factory import CountingTransport
from stripe_sage_pipeline.sage.intacct import IntacctTarget
from stripe_sage_sandboxes.intacct import IntacctEmulatorConfig, IntacctEmulatorServer
from stripe_sage_sandboxes.intacct.app import DEFAULT_CLIENTS, DEFAULT_USERNAME

CLIENT_ID, CLIENT_SECRET = next(iter(DEFAULT_CLIENTS.items()))


@contextlib.contextmanager
def intacct_emulator(**config: Any) -> Iterator[IntacctEmulatorServer]:
    """A fresh emulator on an ephemeral loopback port."""
    config.setdefault("retry_after_s", 0)
    srv = IntacctEmulatorServer(IntacctEmulatorConfig(**config)).start()
    try:
        yield srv
    finally:
        srv.stop()


def target_for(srv: IntacctEmulatorServer, **kwargs: Any) -> tuple[IntacctTarget, CountingTransport]:
    """A counted adapter with fast retries."""
    kwargs.setdefault("backoff_base_s", 0.01)
    kwargs.setdefault("backoff_cap_s", 0.1)
    kwargs.setdefault("max_retries", 8)
    kwargs.setdefault("client_secret", CLIENT_SECRET)
    kwargs.setdefault("username", DEFAULT_USERNAME)
    transport = CountingTransport()
    secret = kwargs.pop("client_secret")
    return IntacctTarget(srv.base_url, CLIENT_ID, secret, transport=transport, **kwargs), transport
