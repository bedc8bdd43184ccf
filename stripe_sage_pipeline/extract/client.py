"""Reading Stripe: rate-limited, retried, resumable page by page, at one explicit API version.

The rate limit and the retries are the pipeline's one policy (`runtime.http_policy`): a moving-window
limiter shared by every reader of the same account in the process, and backoff with full jitter that
never retries sooner than Stripe's `Retry-After`. Only GETs go through here, so a retry cannot duplicate.

Pages are fetched with httpx and parsed with orjson into plain dicts. The official SDK's
`raw_request` did the same job at 7.0 CPU ms per page of 100 charges against 1.8 ms here (its
response parser builds an OrderedDict per object, and its logging formats every request): at 100
req/s that difference is most of a core, which the extractor's threads share (`benchmarks/extract.py`).
The SDK still defines what the pipeline speaks: the default API version (`stripe.api_version`) and
the error types callers catch; `stripe_error` maps an answer to the same class the SDK would raise.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import stripe

from stripe_sage_pipeline.extract.tables import include_params
from stripe_sage_pipeline.runtime.http_policy import RateLimit, RetryPolicy, retry_after_seconds, shared_rate_limit
from stripe_sage_pipeline.settings import load_settings

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # Stripe's maximum
STRIPE_API_BASE = "https://api.stripe.com"
# Stripe's own SDK waits 80 s for an answer and 30 s to connect.
TIMEOUT = httpx.Timeout(80.0, connect=30.0)
USER_AGENT = f"stripe-sage-pipeline (httpx; Stripe API through stripe-python {stripe.VERSION})"


_TLS_LOCK = threading.Lock()


def _tls_context() -> ssl.SSLContext:
    """The process's one TLS context for Stripe (loading the CA bundle takes ~30-40 ms; every client shares it).

    Made under a lock: a window's first requests start in parallel, one thread each, and with a bare
    cache every one of them loaded the bundle (7 probes: 0.45 CPU-s instead of 0.06, 0.55 s to the first
    answers at 300 ms instead of 0.36).
    """
    with _TLS_LOCK:
        return _tls_context_once()


@functools.cache
def _tls_context_once() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def encode_params(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding of query parameters, as the SDK does it.

    `{"created": {"gte": 1}}` → `created[gte]=1`; lists are indexed (`expand[0]=…`); booleans are
    `true`/`false`; None is left out.
    """
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            out += encode_params(value, name)
        elif isinstance(value, list | tuple):
            out += encode_params({str(i): v for i, v in enumerate(value)}, name)
        elif isinstance(value, bool):
            out.append((name, "true" if value else "false"))
        else:
            out.append((name, str(value)))
    return out


def stripe_error(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> stripe.StripeError:
    """The SDK's error class for a Stripe v1 error answer (same mapping as stripe-python's requestor).

    429 (or 400 with code `rate_limit`) → RateLimitError; 400/404 → InvalidRequestError (or
    IdempotencyError); 401 → AuthenticationError; 402 → CardError; 403 → PermissionError; any other
    status, or a body that is not a Stripe error, → APIError carrying the status.
    """
    text = body.decode("utf-8", "replace")
    hdrs = dict(headers or {})
    try:
        payload = orjson.loads(body)
        err = payload["error"]
        if not isinstance(err, dict):
            raise TypeError("not a v1 error")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return stripe.APIError(
            f"Invalid response object from API: {text[:200]!r} (HTTP response code was {status})",
            text,
            status,
            None,
            hdrs,
        )
    message, param, code = err.get("message"), err.get("param"), err.get("code")
    if status == 429 or (status == 400 and code == "rate_limit"):
        return stripe.RateLimitError(message, text, status, payload, hdrs)
    if status in (400, 404):
        if err.get("type") == "idempotency_error":
            return stripe.IdempotencyError(message, text, status, payload, hdrs)
        return stripe.InvalidRequestError(message, param, code, text, status, payload, hdrs)
    if status == 401:
        return stripe.AuthenticationError(message, text, status, payload, hdrs)
    if status == 402:
        return stripe.CardError(message, param, code, text, status, payload, hdrs)
    if status == 403:
        return stripe.PermissionError(message, text, status, payload, hdrs)
    return stripe.APIError(message, text, status, payload, hdrs)


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
        self._api_base = (api_base or STRIPE_API_BASE).rstrip("/")
        # One client per thread, held only by its thread: a pool's worker that ends takes its socket along.
        self._local = threading.local()
        self.stripe_account = stripe_account
        # Every reader of one account in this process draws from one limiter (Stripe limits per account).
        self.limiter = rate_limit or shared_rate_limit(
            ("stripe", api_base or "", stripe_account or "", rate_limit_per_s), rate_limit_per_s, pace=True
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

    def _http(self) -> httpx.Client:
        """This thread's connection to Stripe (one client per thread: a pool shared by 100 threads scans
        every connection on each request), made on first use; all share one TLS context."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(
                base_url=self._api_base, headers=self._headers(), timeout=TIMEOUT, verify=_tls_context()
            )
        return client

    def _headers(self) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Stripe-Version": self.api_version,
            "User-Agent": USER_AGENT,
        }
        if self.stripe_account:
            headers["Stripe-Account"] = self.stripe_account
        return headers

    def _get(self, path: str, params: Mapping[str, Any]) -> dict:
        """One GET: the parsed answer, or the SDK's error class for a Stripe error or a network failure."""
        try:
            resp = self._http().get(path, params=encode_params(params))
        except httpx.TransportError as exc:  # connect, read, timeouts, a closed connection
            raise stripe.APIConnectionError(
                f"Network error talking to Stripe ({type(exc).__name__}): {exc}", should_retry=True
            ) from exc
        if resp.status_code >= 300:
            raise stripe_error(resp.status_code, resp.content, resp.headers)
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise stripe.APIError(
                f"Invalid response body from API (HTTP response code was {resp.status_code})",
                resp.text[:200],
                resp.status_code,
            ) from exc
        if not isinstance(data, dict):
            raise stripe.APIError(f"GET {path}: the answer is not a JSON object", resp.text[:200], resp.status_code)
        return data

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

        def attempt() -> dict:
            self.limiter.acquire()
            self.stats.add(requests=1)
            t0 = time.monotonic()
            data = self._get(path, params)
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
