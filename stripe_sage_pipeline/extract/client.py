"""Reading Stripe through the official SDK: rate-limited, retried, resumable page by page.

We call `StripeClient.raw_request` so that pages arrive as plain dicts (no StripeObject per row,
which would cost more than the HTTP itself at 5k objects/s) while the SDK still owns auth,
encoding of `created[gte]`-style params, `Stripe-Account`, and error mapping.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import stripe

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # Stripe's maximum


class RateLimiter:
    """A token bucket shared by every thread of a process: at most `rate` requests per second."""

    def __init__(self, rate_per_s: float | None, burst: float | None = None):
        self.rate = rate_per_s if rate_per_s and rate_per_s > 0 else None
        # A burst of 1 keeps the instantaneous rate at the limit, which a per-second server bucket wants.
        self.capacity = burst or 1.0
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        """Block until one request may go out."""
        if self.rate is None:
            return
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


@dataclass
class RequestStats:
    """What a reader did: requests sent, retries, and what made it retry."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    network_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("requests", "retries", "rate_limited", "server_errors", "network_errors")}


class StripeReader:
    """Lists and retrieves Stripe objects as dicts, under a rate limit, retrying what is retryable."""

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        stripe_account: str | None = None,
        rate_limit_per_s: float | None = 22,
        max_retries: int = 8,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 20.0,
    ):
        self._api_key = api_key
        self._api_base = api_base
        # One SDK client per thread: a shared one mixed up responses between threads (seen here).
        self._local = threading.local()
        self.stripe_account = stripe_account
        self.limiter = RateLimiter(rate_limit_per_s)
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.stats = RequestStats()

    def __repr__(self) -> str:  # never show the key
        return f"StripeReader(account={self.stripe_account!r}, rate={self.limiter.rate})"

    @property
    def _client(self) -> stripe.StripeClient:
        client = getattr(self._local, "client", None)
        if client is None:
            kwargs = {"base_addresses": {"api": self._api_base}} if self._api_base else {}
            # The SDK's own retries ignore Retry-After and skip 429s; ours do both.
            client = stripe.StripeClient(self._api_key, max_network_retries=0, **kwargs)
            self._local.client = client
        return client

    def request(self, path: str, **params) -> dict:
        """GET `path` with params; retries 429, 5xx and network errors with backoff, honouring Retry-After."""
        if self.stripe_account:
            params["stripe_account"] = self.stripe_account
        attempt = 0
        while True:
            self.limiter.acquire()
            self.stats.add(requests=1)
            try:
                return self._client.raw_request("get", path, **params).data
            except stripe.RateLimitError as exc:
                self.stats.add(rate_limited=1)
                err = exc
            except stripe.APIConnectionError as exc:
                self.stats.add(network_errors=1)
                err = exc
            except stripe.APIError as exc:
                if (exc.http_status or 500) < 500:
                    raise
                self.stats.add(server_errors=1)
                err = exc
            attempt += 1
            if attempt > self.max_retries:
                raise err
            self.stats.add(retries=1)
            time.sleep(self._delay(attempt, err))

    def _delay(self, attempt: int, err: Exception) -> float:
        retry_after = None
        headers = getattr(err, "headers", None) or {}
        try:
            raw = headers.get("Retry-After") or headers.get("retry-after")
            retry_after = float(raw) if raw is not None else None
        except (TypeError, ValueError):
            retry_after = None
        # Full jitter keeps parallel workers from retrying in lock-step.
        backoff = random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1)))
        return max(backoff, retry_after or 0.0)

    def iter_pages(self, path: str, params: dict | None = None, start_after: str | None = None) -> Iterator[tuple[list[dict], str | None]]:
        """Yield (objects, last_id) page by page, newest first; `start_after` resumes after an id."""
        params = dict(params or {})
        params["limit"] = PAGE_SIZE
        cursor = start_after
        while True:
            if cursor:
                params["starting_after"] = cursor
            page = self.request(path, **params)
            data = page.get("data")
            if not isinstance(data, list):
                raise ValueError(f"GET {path}: response is not a Stripe list (no 'data' array)")
            if data:
                cursor = data[-1]["id"]
            yield data, cursor
            if not page.get("has_more") or not data:
                return

    def list_all(self, path: str, params: dict | None = None) -> list[dict]:
        """Every object of a list endpoint for the given filters (all pages)."""
        out: list[dict] = []
        for data, _ in self.iter_pages(path, params):
            out.extend(data)
        return out

    def retrieve(self, path: str, object_id: str, expand: list[str] | None = None) -> dict:
        """One object by id (e.g. path='/v1/charges')."""
        params = {"expand": expand} if expand else {}
        return self.request(f"{path}/{object_id}", **params)
