"""httpx client for the Sage Pro REST contract (docs/sage-pro-contract.md).

What the contract asks of a client, in one place:

* every POST carries a deterministic `Idempotency-Key` (see `keys.py`), the same on every retry;
* 429/503/504, other 5xx and network errors are retried with exponential backoff and full jitter,
  never sooner than the server's `Retry-After`; a 504 after a POST lands on the idempotent replay;
* 409 DuplicateExternalReference is resolved by fetching and checking the stored record
  (`already_exists`); 401/403 raise `CredentialsError`; 422 raises `RecordInvalid` with details;
* a rate limit and a semaphore, shared by every client of one process that talks to the same
  base URL as the same user, keep requests under `rate_per_minute` and `max_concurrency`; the limit
  and the retries are the pipeline's one policy (`runtime.http_policy`: a moving window from `limits`,
  full-jitter backoff from `tenacity`);
* a circuit breaker per base URL detects Sage being down once: after `BREAKER_THRESHOLD` attempts in a
  row that got no answer (connection errors, timeouts, 5xx), or two over `BREAKER_WINDOW_S` seconds,
  every request fails at once with `SageUnavailable` naming the URL and the cause, instead of each item
  of a day retrying on its own; after `BREAKER_COOLDOWN_S` one request probes again. 429 is an answer
  (Sage is up and busy) and never counts.

Credentials go only into the Basic `Authorization` header, never into URLs, logs or `repr`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal
from urllib.parse import quote

import httpx

from stripe_sage_pipeline.runtime.http_policy import (
    RateLimit,
    RetryEvent,
    RetryPolicy,
    retry_after_seconds,
    shared_rate_limit,
)
from stripe_sage_pipeline.sage.errors import (
    Conflict,
    CredentialsError,
    NotFound,
    RecordInvalid,
    SageError,
    SageUnavailable,
    TransientError,
)

log = logging.getLogger(__name__)

ID_FIELDS: dict[str, str] = {
    "customers": "custno",
    "invoices": "invno",
    "cash-receipts": "receipt_no",
    "journal-entries": "batch_no",
}
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
MAX_RETRY_AFTER_S = 600.0


@dataclass(frozen=True)
class PostResult:
    """Outcome of a write: `created` now, `replayed` (an earlier attempt's answer) or `already_exists`."""

    status: Literal["created", "replayed", "already_exists"]
    record: dict[str, Any]
    sage_id: str
    request_id: str


BREAKER_THRESHOLD = 8  # 15% random 5xx (the chaos mix) trips it once in ~4 million attempt runs
BREAKER_WINDOW_S = 20.0
BREAKER_COOLDOWN_S = 30.0
DOWN_STATUS = frozenset({500, 502, 503, 504})


class CircuitBreaker:
    """Closed while Sage answers; open (fail fast) once it has not answered for a while; thread-safe.

    A failure is an attempt without an answer: a network error or timeout, or a 5xx. The breaker opens
    after `threshold` failures in a row, or after two when the first was `window_s` or more ago (slow
    timeouts). While open, `check()` raises `SageUnavailable`; after `cooldown_s` it lets one request
    through as a probe (half-open): an answer closes it, another failure re-opens it.
    """

    def __init__(
        self,
        base_url: str,
        threshold: int = BREAKER_THRESHOLD,
        window_s: float = BREAKER_WINDOW_S,
        cooldown_s: float = BREAKER_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
        name: str = "Sage Pro",
    ) -> None:
        self.base_url = base_url
        self.name = name  # the system in the error ("Sage Pro", "Sage Intacct")
        self.threshold = max(1, threshold)
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0
        self.first_failure_at: float | None = None
        self.opened_at: float | None = None
        self.cause: str | None = None
        self._probing = False
        self._probe_thread: int | None = None

    @property
    def is_open(self) -> bool:
        """True while requests fail fast."""
        return self.opened_at is not None

    def error(self) -> SageUnavailable:
        """The error every request gets while the breaker is open."""
        return SageUnavailable(
            f"{self.name} is unavailable at {self.base_url}: {self.cause} ({self.failures} attempts in a row without"
            f" an answer); nothing more is sent for {self.cooldown_s:.0f} s",
            status=None,
            code="SageUnavailable",
        )

    def check(self) -> None:
        """Raise `SageUnavailable` while open; after the cooldown let one probe through (the thread that got
        the probe passes every check until its attempt is recorded, so a client may check twice per attempt)."""
        with self._lock:
            if self.opened_at is None:
                return
            me = threading.get_ident()
            if self._probing and self._probe_thread == me:
                return
            if not self._probing and self._clock() - self.opened_at >= self.cooldown_s:
                self._probing, self._probe_thread = True, me
                return
        raise self.error()

    def success(self) -> None:
        """Sage answered: close."""
        with self._lock:
            self.failures, self.first_failure_at, self.opened_at, self.cause, self._probing = 0, None, None, None, False

    def failure(self, cause: str) -> bool:
        """An attempt got no answer; True when the breaker is (now) open."""
        with self._lock:
            now = self._clock()
            self.failures += 1
            self.cause = cause
            if self.first_failure_at is None:
                self.first_failure_at = now
            if (
                self._probing
                or self.failures >= self.threshold
                or (self.failures >= 2 and now - self.first_failure_at >= self.window_s)
            ):
                self.opened_at, self._probing = now, False
            return self.opened_at is not None

    def send(
        self, request: Callable[[], httpx.Response], what: str, errors: tuple[type[BaseException], ...]
    ) -> httpx.Response:
        """Send one attempt (`request()`) and record its outcome: a network error in `errors` or a 5xx is a
        failure (raising `SageUnavailable` once that opens the breaker, else the error itself / the answer);
        any other answer closes the breaker. `what` names the request in the cause ("POST /x")."""
        try:
            response = request()
        except errors as exc:
            if self.failure(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__):
                raise self.error() from exc
            raise
        if response.status_code in DOWN_STATUS:
            if self.failure(f"HTTP {response.status_code} on {what}"):
                raise self.error()
        else:
            self.success()
        return response


_BREAKERS: dict[str, CircuitBreaker] = {}


def shared_breaker(base_url: str, name: str = "Sage Pro") -> CircuitBreaker:
    """The breaker of a base URL, shared by every client of this process (`name` is the system it guards)."""
    with _LIMITERS_LOCK:
        if base_url not in _BREAKERS:
            _BREAKERS[base_url] = CircuitBreaker(base_url, name=name)
        return _BREAKERS[base_url]


_SLOTS: dict[tuple[str, str, int | None, int], threading.BoundedSemaphore] = {}
_LIMITERS_LOCK = threading.Lock()


def _shared_limits(
    base_url: str, user: str, rate_per_minute: int | None, max_concurrency: int
) -> tuple[RateLimit, threading.BoundedSemaphore]:
    """The rate limit and the concurrency slots of one base URL and user, shared by every client of this process."""
    key = (base_url, user, rate_per_minute, max_concurrency)
    with _LIMITERS_LOCK:
        if key not in _SLOTS:
            _SLOTS[key] = threading.BoundedSemaphore(max(1, max_concurrency))
        slots = _SLOTS[key]
    return shared_rate_limit(("sagepro", *key), rate_per_minute / 60.0 if rate_per_minute else None), slots


def _retry_after_s(outcome: object) -> float | None:
    """Seconds from a failed attempt's `Retry-After` header (delta-seconds or HTTP date), or None."""
    if not isinstance(outcome, httpx.Response):
        return None
    return retry_after_seconds(outcome.headers.get("retry-after"), cap_s=MAX_RETRY_AFTER_S)


def _answer_again(response: httpx.Response) -> bool:
    """A retryable answer: 429/5xx, or 409 RequestInProgress (our own earlier attempt still runs: wait for it)."""
    if response.status_code in RETRYABLE_STATUS:
        return True
    return response.status_code == 409 and _envelope(response).get("code") == "RequestInProgress"


def _failure(outcome: object) -> str:
    return f"HTTP {outcome.status_code}" if isinstance(outcome, httpx.Response) else type(outcome).__name__


def _envelope(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else {}


def _day(value: date | str | None) -> str | None:
    return value.isoformat() if isinstance(value, date) else value


class SageClient:
    """Client for one Sage Pro company, e.g. `SageClient("http://127.0.0.1:8765/sagepro/v1/PRO01", u, p)`."""

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        timeout_s: float = 30,
        max_retries: int = 6,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30,
        max_concurrency: int = 4,
        rate_per_minute: int | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.user = user
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._sleep = sleep
        self.retry = RetryPolicy(max_retries=max_retries, backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s)
        self._rate, self._slots = _shared_limits(self.base_url, user, rate_per_minute, max_concurrency)
        self.breaker = breaker if breaker is not None else shared_breaker(self.base_url)
        # The password lives only inside httpx's BasicAuth; nothing here keeps or prints it.
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            auth=httpx.BasicAuth(user, password),
            timeout=httpx.Timeout(timeout_s),
            headers={"Accept": "application/json", "User-Agent": "stripe-sage-pipeline"},
            transport=transport,
            limits=httpx.Limits(max_connections=max(4, max_concurrency * 2)),
        )

    def __repr__(self) -> str:
        return f"SageClient(base_url={self.base_url!r}, user={self.user!r}, password='***')"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> SageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport with retries ------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """One logical request: retried on transient failures, returned as soon as the answer is final.

        Every attempt sends the same `Idempotency-Key`, passes the breaker, the rate limit and a slot.
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        attempts = 0

        def attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            self.breaker.check()
            self._rate.acquire(self._sleep)
            with self._slots:
                self.breaker.check()  # another thread may have opened it while this one waited
                return self.breaker.send(
                    lambda: self._http.request(method, url, json=json, params=params, headers=headers),
                    f"{method} {url}",
                    RETRYABLE_ERRORS,
                )

        def on_retry(event: RetryEvent) -> None:
            failure = _failure(event.exception or event.result)
            log.info("sage %s %s: %s, retry %d in %.2f s", method, url, failure, event.attempt, event.delay_s)

        try:
            response = self.retry.call(
                attempt,
                retry_on_exception=lambda exc: isinstance(exc, RETRYABLE_ERRORS),
                retry_on_result=_answer_again,
                retry_after=_retry_after_s,
                on_retry=on_retry,
                sleep=self._sleep,
            )
        except RETRYABLE_ERRORS as exc:
            raise TransientError(
                f"Sage {method} {url} still failing after {attempts} attempts: {_failure(exc)}", status=None
            ) from exc
        if _answer_again(response):
            envelope = _envelope(response)
            raise TransientError(
                f"Sage {method} {url} still failing after {attempts} attempts: {_failure(response)}",
                status=response.status_code,
                code=envelope.get("code"),
                details=envelope.get("details"),
                request_id=response.headers.get("x-request-id"),
            )
        log.debug(
            "sage %s %s -> %s (request %s, attempt %d)",
            method,
            url,
            response.status_code,
            response.headers.get("x-request-id"),
            attempts,
        )
        return response

    def _raise_for(self, response: httpx.Response) -> None:
        """Turn an error answer into the matching typed exception."""
        status = response.status_code
        if status < 400:
            return
        env = _envelope(response)
        kwargs: dict[str, Any] = {
            "status": status,
            "code": env.get("code"),
            "details": env.get("details") or [],
            "request_id": env.get("request_id") or response.headers.get("x-request-id"),
        }
        message = env.get("message") or f"HTTP {status}"
        if status in (401, 403):
            what = "rejected the credentials" if status == 401 else "refused the operation for lack of a role"
            raise CredentialsError(
                f"Sage Pro {what} of user {self.user!r}: check SAGEPRO_USER/SAGEPRO_PASSWORD and that the user"
                f" has the read and post roles ({message})",
                **kwargs,
            )
        if status == 422:
            raise RecordInvalid(message, **kwargs)
        if status == 404:
            raise NotFound(message, **kwargs)
        if status == 409:
            raise Conflict(message, **kwargs)
        raise SageError(message, **kwargs)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        self._raise_for(response)
        return response.json()

    # -- reads ---------------------------------------------------------------------------------

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET a path relative to the company base URL (e.g. "/accounts/1010") and return its JSON."""
        return self._json(self._send("GET", path, params=params))

    def find_by_external_ref(self, resource: str, ref: str) -> dict[str, Any] | None:
        """The record of `resource` whose external_ref is `ref`, or None (look before writing)."""
        page = self.get(f"/{resource}", {"external_ref": ref, "$top": 1})
        return page["value"][0] if page.get("value") else None

    def list_all(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every record of a collection, following `next` page links."""
        query = {"$top": 1000, **(params or {})}
        page = self.get(path, query)
        origin = httpx.URL(self.base_url)
        while True:
            yield from page.get("value", [])
            nxt = page.get("next")
            if not nxt:
                return
            target = httpx.URL(nxt)
            if not target.is_absolute_url:  # a facade may answer with a path-only link
                target = origin.join(nxt)
            # Credentials go only to our own server, whatever a `next` link says.
            if (target.scheme, target.host, target.port) != (origin.scheme, origin.host, origin.port):
                raise SageError(f"refusing to follow a next link to another server: {target.host}")
            page = self._json(self._send("GET", str(target)))

    def account_balance(self, glacnt: str, from_date: date | str | None, to_date: date | str | None) -> dict[str, Any]:
        """Debit, credit and net per currency of one GL account over an inclusive date range."""
        params = {k: v for k, v in (("from", _day(from_date)), ("to", _day(to_date))) if v}
        return self.get(f"/accounts/{quote(glacnt, safe='')}/balance", params)

    # -- writes --------------------------------------------------------------------------------

    def post(self, resource: str, body: dict[str, Any], *, idempotency_key: str, external_ref: str) -> PostResult:
        """Create a customer, invoice, cash receipt or journal entry exactly once."""
        if resource not in ID_FIELDS:
            raise ValueError(f"resource must be one of {sorted(ID_FIELDS)}, not {resource!r}")
        if not idempotency_key or not external_ref:
            raise ValueError("idempotency_key and external_ref are required")
        if body.get("external_ref") not in (None, external_ref):
            raise ValueError("body.external_ref differs from external_ref")
        payload = {**body, "external_ref": external_ref}
        response = self._send("POST", f"/{resource}", json=payload, idempotency_key=idempotency_key)
        if response.status_code == 409 and _envelope(response).get("code") == "DuplicateExternalReference":
            return self._existing(resource, response, external_ref)
        record = self._json(response)
        return self._result(resource, response, record)

    def _result(self, resource: str, response: httpx.Response, record: dict[str, Any]) -> PostResult:
        replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
        return PostResult(
            status="replayed" if replayed else "created",
            record=record,
            sage_id=str(record[ID_FIELDS[resource]]),
            request_id=response.headers.get("x-request-id", ""),
        )

    def _existing(self, resource: str, response: httpx.Response, external_ref: str) -> PostResult:
        """Resolve a DuplicateExternalReference: fetch the stored record and check it is ours."""
        env = _envelope(response)
        existing_id = next((d.get("existing_id") for d in env.get("details") or [] if d.get("existing_id")), None)
        record: dict[str, Any] | None
        if existing_id:
            record = self.get(f"/{resource}/{quote(str(existing_id), safe='')}")
        else:
            record = self.find_by_external_ref(resource, external_ref)
        if not record or record.get("external_ref") != external_ref:
            raise Conflict(
                f"Sage reported external_ref {external_ref!r} as used, but the stored record does not carry it",
                status=409,
                code="DuplicateExternalReference",
                details=env.get("details"),
                request_id=env.get("request_id"),
            )
        log.info("sage %s %s already exists as %s", resource, external_ref, record.get(ID_FIELDS[resource]))
        return PostResult(
            status="already_exists",
            record=record,
            sage_id=str(record[ID_FIELDS[resource]]),
            request_id=env.get("request_id") or response.headers.get("x-request-id", ""),
        )

    def patch_customer(self, custno: str, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """Update a customer; raises `NotFound` when it does not exist (the caller then creates it)."""
        response = self._send(
            "PATCH", f"/customers/{quote(custno, safe='')}", json=body, idempotency_key=idempotency_key
        )
        return self._json(response)

    def reverse_journal_entry(
        self,
        batch_no: str,
        idempotency_key: str,
        *,
        posting_date: date | str | None = None,
        external_ref: str | None = None,
        description: str | None = None,
    ) -> PostResult:
        """Post the mirror of an entry; an entry reversed before returns `already_exists` with its reversal."""
        body = {
            k: v
            for k, v in (
                ("posting_date", _day(posting_date)),
                ("external_ref", external_ref),
                ("description", description),
            )
            if v is not None
        }
        path = f"/journal-entries/{quote(batch_no, safe='')}"
        response = self._send("POST", f"{path}/reverse", json=body, idempotency_key=idempotency_key)
        env = _envelope(response) if response.status_code == 409 else {}
        if env.get("code") == "AlreadyReversed":
            reversal_no = next((d.get("existing_id") for d in env.get("details") or [] if d.get("existing_id")), None)
            reversal_no = reversal_no or self.get(path).get("reversed_by")
            record = self.get(f"/journal-entries/{quote(str(reversal_no), safe='')}")
            return PostResult("already_exists", record, str(record["batch_no"]), env.get("request_id") or "")
        return self._result("journal-entries", response, self._json(response))


__all__ = ["ID_FIELDS", "CircuitBreaker", "PostResult", "SageClient", "shared_breaker"]
