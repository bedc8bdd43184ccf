"""Reading Stripe through the official SDK: rate-limited, retried, resumable page by page.

The rate limit and the retries are the pipeline's one policy (`runtime.http_policy`): a moving-window
limiter shared by every reader of the same account in the process, and backoff with full jitter that
never retries sooner than Stripe's `Retry-After`. Only GETs go through here, so a retry cannot duplicate.

We call `StripeClient.raw_request` so that pages arrive as plain dicts (no StripeObject per row,
which would cost more than the HTTP itself at 5k objects/s) while the SDK still owns auth,
encoding of `created[gte]`-style params, `Stripe-Account`, and error mapping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import stripe

from stripe_sage_pipeline.extract.tables import include_params
from stripe_sage_pipeline.runtime.http_policy import RateLimit, RetryPolicy, retry_after_seconds, shared_rate_limit
from stripe_sage_pipeline.settings import load_settings

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # Stripe's maximum


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


class LatencyMeter:
    """Observed seconds per Stripe answer (send to last byte, limiter waits excluded): an EWMA plus a count."""

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha
        self.mean_s: float | None = None
        self.samples = 0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self.mean_s = seconds if self.mean_s is None else self.mean_s + self.alpha * (seconds - self.mean_s)
            self.samples += 1


def _retryable(exc: BaseException) -> bool:
    """429, 5xx and network errors are transient; every other Stripe error is final."""
    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError):
        return True
    return isinstance(exc, stripe.APIError) and (exc.http_status or 500) >= 500


def _retry_after(exc: BaseException | None) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    try:
        return retry_after_seconds(headers.get("Retry-After") or headers.get("retry-after"))
    except AttributeError:
        return None


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
        rate_limit: RateLimit | None = None,
        api_version: str | None = None,
    ):
        self._api_key = api_key
        # Every request at one explicit version (STRIPE_API_VERSION, default the SDK's own).
        self.api_version = api_version or load_settings().stripe_api_version
        self._api_base = api_base
        # One SDK client per thread: a shared one mixed up responses between threads (seen here).
        self._local = threading.local()
        self.stripe_account = stripe_account
        # Every reader of one account in this process draws from one limiter (Stripe limits per account).
        self.limiter = rate_limit or shared_rate_limit(
            ("stripe", api_base or "", stripe_account or "", rate_limit_per_s), rate_limit_per_s
        )
        self.retry = RetryPolicy(max_retries=max_retries, backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s)
        self.stats = RequestStats()
        self.latency = LatencyMeter()  # Stripe's answer time per request
        self.processing = LatencyMeter()  # the extractor's time per page between answer and next request

    def seconds_per_page(self) -> float:
        """Observed seconds a worker spends per page (answer + processing): W in Little's law."""
        from stripe_sage_pipeline.extract.concurrency import seconds_per_page

        return seconds_per_page(self.latency.mean_s, self.processing.mean_s)

    @property
    def rate_limit_per_s(self) -> float | None:
        """The request rate this reader keeps under (None: unlimited)."""
        return self.limiter.rate_per_s

    def __repr__(self) -> str:  # never show the key
        return f"StripeReader(account={self.stripe_account!r}, version={self.api_version!r}, rate={self.limiter.rate_per_s})"

    @property
    def _client(self) -> stripe.StripeClient:
        client = getattr(self._local, "client", None)
        if client is None:
            kwargs = {"base_addresses": {"api": self._api_base}} if self._api_base else {}
            # The SDK's own retries ignore Retry-After and skip 429s; ours do both.
            client = stripe.StripeClient(
                self._api_key, max_network_retries=0, stripe_version=self.api_version, **kwargs
            )
            self._local.client = client
        return client

    def _count_failure(self, exc: BaseException | None, retried: bool) -> None:
        kind = (
            "rate_limited"
            if isinstance(exc, stripe.RateLimitError)
            else "network_errors"
            if isinstance(exc, stripe.APIConnectionError)
            else "server_errors"
        )
        self.stats.add(retries=int(retried), **{kind: 1})

    def request(self, path: str, **params) -> dict:
        """GET `path` with params; retries 429, 5xx and network errors with backoff, honouring Retry-After."""
        if self.stripe_account:
            params["stripe_account"] = self.stripe_account

        def attempt() -> dict:
            self.limiter.acquire()
            self.stats.add(requests=1)
            t0 = time.monotonic()
            data = self._client.raw_request("get", path, **params).data
            self.latency.add(time.monotonic() - t0)
            return data

        try:
            return self.retry.call(
                attempt,
                retry_on_exception=_retryable,
                retry_after=_retry_after,
                on_retry=lambda ev: self._count_failure(ev.exception, retried=True),
            )
        except stripe.StripeError as exc:
            if _retryable(exc):  # out of retries: the last failure counts too
                self._count_failure(exc, retried=False)
            raise

    def iter_pages(
        self, path: str, params: dict | None = None, start_after: str | None = None
    ) -> Iterator[tuple[list[dict], str | None]]:
        """Yield (objects, last_id) page by page, newest first; `start_after` resumes after an id."""
        params = dict(params or {})
        cursor = start_after
        while True:
            if cursor:
                params["starting_after"] = cursor
            page = self.list_page(path, params)
            data = page.get("data")
            if not isinstance(data, list):
                raise ValueError(f"GET {path}: response is not a Stripe list (no 'data' array)")
            if data:
                cursor = data[-1]["id"]
            yield data, cursor
            if not page.get("has_more") or not data:
                return

    def list_page(self, path: str, params: dict | None = None) -> dict:
        """One page (100 objects) of a list endpoint, with what this API version must include."""
        params = dict(params or {})
        included = include_params(path, self.api_version, on_list=True).get("expand", [])
        if included:  # what this version needs, plus whatever the caller expands
            params["expand"] = [*included, *(e for e in params.get("expand", []) if e not in included)]
        params["limit"] = PAGE_SIZE
        return self.request(path, **params)

    def list_all(self, path: str, params: dict | None = None) -> list[dict]:
        """Every object of a list endpoint for the given filters (all pages)."""
        out: list[dict] = []
        for data, _ in self.iter_pages(path, params):
            out.extend(data)
        return out

    def retrieve(self, path: str, object_id: str, expand: list[str] | None = None) -> dict:
        """One object by id (e.g. path='/v1/charges')."""
        params = include_params(path, self.api_version, on_list=False)
        if expand:
            params["expand"] = [*params.get("expand", []), *(e for e in expand if e not in params.get("expand", []))]
        return self.request(f"{path}/{object_id}", **params)
