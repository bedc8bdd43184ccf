"""HTTP client factory: a counted client for the configured target (`SAGE_TARGET=sagepro|intacct`)."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from stripe_sage_pipeline.sage.client import SageClient

TARGETS = ("sagepro", "intacct")


class CountingTransport(httpx.BaseTransport):
    """An httpx transport that counts the requests it sends (retries included); thread-safe."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self.inner = inner or httpx.HTTPTransport()
        self.count = 0
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Count, then delegate."""
        with self._lock:
            self.count += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()


def make_client(
    base_url: str,
    user: str,
    password: str,
    *,
    rate_per_minute: int | None = None,
    max_concurrency: int = 4,
    **kwargs: Any,
) -> tuple[SageClient, CountingTransport]:
    """A Sage Pro `SageClient` whose requests are counted (the counter is returned beside it)."""
    transport = CountingTransport()
    client = SageClient(
        base_url,
        user,
        password,
        rate_per_minute=rate_per_minute,
        max_concurrency=max_concurrency,
        transport=transport,
        **kwargs,
    )
    return client, transport


def make_target_client(
    settings: Any,
    *,
    rate_per_minute: int | None = None,
    max_concurrency: int = 4,
    base_url: str | None = None,
    **kwargs: Any,
) -> tuple[Any, CountingTransport]:
    """The configured target's client and its request counter.

    `sagepro` → a `SageClient` (the load stage wraps it as a `Target`); `intacct` → an `IntacctTarget`.
    """
    target = getattr(settings, "sage_target", "sagepro")
    if target == "intacct":
        from stripe_sage_pipeline.sage.intacct import make_intacct

        return make_intacct(
            settings, rate_per_minute=rate_per_minute, max_concurrency=max_concurrency, base_url=base_url, **kwargs
        )
    if target != "sagepro":
        raise ValueError(f"SAGE_TARGET must be one of {', '.join(TARGETS)}, not {target!r}")
    return make_client(
        base_url or settings.sagepro_base_url or "http://127.0.0.1:8765/sagepro/v1/PRO01",
        settings.sagepro_user,
        settings.sagepro_password,
        rate_per_minute=rate_per_minute,
        max_concurrency=max_concurrency,
        **kwargs,
    )


__all__ = ["TARGETS", "CountingTransport", "make_client", "make_target_client"]
