"""`IntacctTarget`: the load stage's `Target` over Sage Intacct's REST API v1 (httpx).

* OAuth 2.0 (`/oauth2/token`): the client-credentials grant for a web services user
  (`username` = userId@companyId[|entityId]), or a refresh token from an authorization-code consent.
  The access token is renewed before it expires; a 401 renews it once and retries, a second 401 (or a
  refused grant) raises `CredentialsError`, which stops the run and alerts.
* Retries: 429 waits for `Retry-After`, 503/5xx/timeouts back off with full jitter (the token endpoint's
  included); the rate limit and the retries are the pipeline's one policy (`runtime.http_policy`).
  Intacct documents no
  idempotency for object POSTs, so the Stripe id rides in a searchable field and every write looks
  before it writes through the query service (`/services/core/query`), first and again after any
  failure whose outcome is unknown: a retry after a lost response finds the record instead of posting
  twice. The `Idempotency-Key` header is sent too, for a gateway that honours it.
* Errors: `ia::error` → `sage.errors` with Sage Pro's reason codes (`errors.py`).
* Intacct down: the Sage Pro client's `CircuitBreaker`, one per base URL (`shared_breaker`). After
  `BREAKER_THRESHOLD` attempts in a row without an answer (connection errors, timeouts, 5xx, the token
  endpoint's too), or two over `BREAKER_WINDOW_S`, every request fails at once with `SageUnavailable`
  naming the URL and the cause; nothing is resent, so the items stay `computed` and the day stops.
  429 is an answer and never counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import httpx

from stripe_sage_pipeline.money import exponent
from stripe_sage_pipeline.runtime.http_policy import RateLimit, RetryEvent, RetryPolicy, retry_after_seconds
from stripe_sage_pipeline.sage.client import CircuitBreaker, PostResult, shared_breaker
from stripe_sage_pipeline.sage.errors import Conflict, CredentialsError, NotFound, SageUnavailable, TransientError
from stripe_sage_pipeline.sage.intacct import payloads as P
from stripe_sage_pipeline.sage.intacct.errors import to_exception
from stripe_sage_pipeline.sage.target import CUSTOMERS, INVOICES, JE, RECEIPTS

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8766/ia/api/v1"
RETRYABLE = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 600.0
NETWORK_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
QUERY_PAGE = 4000
# Where each resource keeps the Stripe id, and the object that is searched for it.
LOOKUP: dict[str, tuple[str, str]] = {
    JE: ("general-ledger/journal-entry", "referenceNumber"),
    INVOICES: ("accounts-receivable/invoice", "invoiceNumber"),
    RECEIPTS: ("accounts-receivable/payment", "documentNumber"),
    CUSTOMERS: ("accounts-receivable/customer", "id"),
}
OBJECT_PATH = {
    JE: "general-ledger/journal-entry",
    INVOICES: "accounts-receivable/invoice",
    RECEIPTS: "accounts-receivable/payment",
    CUSTOMERS: "accounts-receivable/customer",
}
CUSTOMER_FIELDS = [
    "key",
    "id",
    "name",
    "currency",
    "notes",
    "audit.modifiedDateTime",
    "contacts.default.email1",
    "contacts.default.phone1",
    "contacts.default.mailingAddress.addressLine1",
    "contacts.default.mailingAddress.addressLine2",
    "contacts.default.mailingAddress.city",
    "contacts.default.mailingAddress.state",
    "contacts.default.mailingAddress.postCode",
    "contacts.default.mailingAddress.isoCountryCode",
]


class _Token:
    """The current access token; renewed `margin_s` before expiry, one renewal at a time."""

    def __init__(self, fetch: Callable[[], dict[str, Any]], margin_s: float = 60.0) -> None:
        self._fetch = fetch
        self._margin = margin_s
        self._lock = threading.Lock()
        self.value: str | None = None
        self.expires_at = 0.0
        self.renewals = 0

    def get(self) -> str:
        with self._lock:
            if self.value is None or time.monotonic() >= self.expires_at - self._margin:
                self._renew()
            return self.value  # type: ignore[return-value]

    def invalidate(self, stale: str | None) -> None:
        """Forget a token the server refused (unless another thread renewed it already)."""
        with self._lock:
            if self.value == stale:
                self.value = None

    def _renew(self) -> None:
        answer = self._fetch()
        self.value = answer["access_token"]
        ttl = float(answer.get("expires_in") or 3600)
        self.expires_at = time.monotonic() + ttl
        self._margin = min(self._margin, ttl / 10)
        self.renewals += 1


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


class IntacctTarget:
    """One Sage Intacct company as the pipeline's `Target`, e.g. `IntacctTarget(url, id, secret, username=…)`."""

    name = "intacct"

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        username: str | None = None,
        refresh_token: str | None = None,
        locations: dict[str, str] | None = None,
        timeout_s: float = 30,
        max_retries: int = 6,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30,
        max_concurrency: int = 4,
        rate_per_minute: int | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not username and not refresh_token:
            raise ValueError("IntacctTarget needs a web services username (client credentials) or a refresh token")
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.username = username
        self.locations = {k.lower(): v for k, v in (locations or {}).items()}
        self.retry = RetryPolicy(max_retries=max_retries, backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s)
        self._secret = client_secret
        self._refresh_token = refresh_token
        self._sleep = sleep
        self._slots = threading.BoundedSemaphore(max(1, max_concurrency))
        self._rate = RateLimit(rate_per_minute / 60.0 if rate_per_minute else None)
        self.breaker = breaker if breaker is not None else shared_breaker(self.base_url, name="Sage Intacct")
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "stripe-sage-pipeline"},
            limits=httpx.Limits(max_connections=max(4, max_concurrency * 2)),
        )
        self.token = _Token(self._fetch_token)

    def __repr__(self) -> str:
        return f"IntacctTarget(base_url={self.base_url!r}, client_id={self.client_id!r}, secret='***')"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- OAuth 2.0 ---------------------------------------------------------------------------------------

    def _fetch_token(self) -> dict[str, Any]:
        form = {"client_id": self.client_id, "client_secret": self._secret}
        if self._refresh_token:
            form.update(grant_type="refresh_token", refresh_token=self._refresh_token)
        else:
            form.update(grant_type="client_credentials", username=self.username or "")
        self.breaker.check()  # a thread that waited for the token lock while another's renewal failed
        try:
            response = self.breaker.send(
                lambda: self._http.post("oauth2/token", data=form), "POST oauth2/token", NETWORK_ERRORS
            )
        except NETWORK_ERRORS as exc:
            raise TransientError(f"Sage Intacct token endpoint unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(
                f"Sage Intacct token endpoint answered {response.status_code}", status=response.status_code
            )
        if response.status_code != 200:
            try:
                err = response.json()
            except ValueError:
                err = {}
            raise CredentialsError(
                f"Sage Intacct refused the OAuth grant ({err.get('error', response.status_code)}:"
                f" {err.get('error_description', '')}): check INTACCT_CLIENT_ID, INTACCT_CLIENT_SECRET and"
                " INTACCT_USERNAME (or INTACCT_REFRESH_TOKEN)",
                status=response.status_code,
                code=err.get("error"),
            )
        answer = response.json()
        if answer.get("refresh_token") and self._refresh_token:
            self._refresh_token = answer["refresh_token"]  # refresh tokens rotate
        return answer

    # -- transport ---------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        unknown_outcome: Callable[[], PostResult | None] | None = None,
    ) -> httpx.Response | PostResult:
        """One logical request with auth, the rate limit, retries and the circuit breaker; returns the final answer.

        For a write, `unknown_outcome` is asked after a failure that may have committed (5xx, timeout):
        when it finds the record, that result is returned instead of sending again. While the breaker is
        open (Intacct down) `SageUnavailable` is raised at once, without a request.
        """
        refreshed = False
        attempts = 0
        look_first = False  # the last failure may have committed (a request was sent, the answer was not a 429)

        def attempt() -> httpx.Response | PostResult:
            nonlocal refreshed, attempts, look_first
            attempts += 1
            self.breaker.check()
            if look_first and unknown_outcome is not None:
                found = unknown_outcome()
                if found is not None:
                    return found
            look_first = False
            while True:
                token = self.token.get()  # TransientError when the token endpoint does not answer: nothing sent
                self._rate.acquire(self._sleep)
                with self._slots:
                    self.breaker.check()  # another thread may have opened it while this one waited
                    look_first = True
                    response = self.breaker.send(
                        lambda token=token: self._http.request(
                            method, path, json=json, headers={**(headers or {}), "Authorization": f"Bearer {token}"}
                        ),
                        f"{method} {path}",
                        NETWORK_ERRORS,
                    )
                if response.status_code == 429:
                    look_first = False  # refused before it was read: nothing committed
                if response.status_code != 401:
                    return response
                if refreshed:
                    raise to_exception(401, _json(response), what=f"{method} {path}")
                self.token.invalidate(token)
                refreshed = True

        def retryable(exc: BaseException) -> bool:
            # Network errors, and a token endpoint that did not answer; never an open breaker (Intacct down).
            return isinstance(exc, NETWORK_ERRORS) or (
                isinstance(exc, TransientError) and not isinstance(exc, SageUnavailable)
            )

        def on_retry(event: RetryEvent) -> None:
            failure = (
                (
                    str(event.exception)
                    if isinstance(event.exception, TransientError)
                    else type(event.exception).__name__
                )
                if event.exception
                else f"HTTP {event.result.status_code}"
            )
            log.info("intacct %s %s: %s, retry %d in %.2f s", method, path, failure, event.attempt, event.delay_s)

        try:
            answer = self.retry.call(
                attempt,
                retry_on_exception=retryable,
                retry_on_result=lambda r: isinstance(r, httpx.Response) and r.status_code in RETRYABLE,
                retry_after=lambda r: (
                    retry_after_seconds(r.headers.get("retry-after"), cap_s=MAX_RETRY_AFTER_S)
                    if isinstance(r, httpx.Response)
                    else None
                ),
                on_retry=on_retry,
                sleep=self._sleep,
            )
        except SageUnavailable:
            raise
        except (*NETWORK_ERRORS, TransientError) as exc:
            failure = str(exc) if isinstance(exc, TransientError) else type(exc).__name__
            raise TransientError(
                f"Sage Intacct {method} {path} still failing after {attempts} attempts: {failure}"
            ) from exc
        if isinstance(answer, httpx.Response) and answer.status_code in RETRYABLE:
            raise TransientError(
                f"Sage Intacct {method} {path} still failing after {attempts} attempts: HTTP {answer.status_code}",
                status=answer.status_code,
            )
        return answer

    def _ok(self, response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 400:
            raise to_exception(response.status_code, _json(response), what=what)
        return response.json()

    # -- reads -------------------------------------------------------------------------------------------

    def query(
        self,
        obj: str,
        fields: list[str],
        filters: list[dict[str, Any]] | None = None,
        order_by: list[dict[str, str]] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every row of a query-service query, following `ia::meta.next`."""
        start = 1
        while True:
            body: dict[str, Any] = {"object": obj, "fields": fields, "start": start, "size": QUERY_PAGE}
            if filters:
                body["filters"] = filters
            if order_by:
                body["orderBy"] = order_by
            page = self._ok(self._request("POST", "services/core/query", json=body), f"query {obj}")
            yield from page.get("ia::result") or []
            nxt = (page.get("ia::meta") or {}).get("next")
            if not nxt:
                return
            start = int(nxt)

    def _lookup(self, resource: str, value: str) -> str | None:
        obj, fld = LOOKUP[resource]
        rows = list(self.query(obj, ["key", fld], [{"$eq": {fld: value}}]))
        return str(rows[0]["key"]) if rows else None

    def _get(self, resource: str, key: str) -> dict[str, Any]:
        response = self._request("GET", f"objects/{OBJECT_PATH[resource]}/{key}")
        return self._ok(response, f"GET {resource} {key}")["ia::result"]

    def find(self, resource: str, external_ref: str) -> str | None:
        """The key of the record carrying this Stripe ref (query service), or None."""
        if resource == CUSTOMERS:
            rows = list(
                self.query(LOOKUP[CUSTOMERS][0], ["key", "id"], [{"$eq": {"notes": f"{P.STRIPE_NOTE}{external_ref}"}}])
            )
            return str(rows[0]["id"]) if rows else None
        return self._lookup(resource, external_ref)

    def accounts(self) -> list[dict[str, Any]]:
        """The chart as `{glacnt, description, active, postable}`."""
        rows = self.query("general-ledger/account", ["key", "id", "name", "status", "disallowDirectPosting"])
        return [
            {
                "glacnt": r["id"],
                "description": r.get("name"),
                "active": r.get("status") == "active",
                "postable": not r.get("disallowDirectPosting"),
            }
            for r in rows
        ]

    def gl_movement(
        self,
        accounts: Iterable[str] | None = None,
        from_date: date | str | None = None,
        to_date: date | str | None = None,
    ) -> dict[str, dict[str, str]]:
        """Net debit − credit per currency and account from the GL lines (every journal, AR batches too)."""
        wanted = set(accounts) if accounts is not None else None
        filters: list[dict[str, Any]] = [{"$eq": {"state": "posted"}}]
        if from_date:
            filters.append({"$gte": {"journalEntry.postingDate": str(from_date)}})
        if to_date:
            filters.append({"$lte": {"journalEntry.postingDate": str(to_date)}})
        by_location = {v.upper(): k for k, v in self.locations.items()}
        sums: dict[str, dict[str, Decimal]] = {}
        for row in self.query(
            "general-ledger/journal-entry-line",
            ["glAccount.id", "txnType", "txnAmount", "dimensions.location.id"],
            filters,
        ):
            code = row["glAccount.id"]
            if wanted is not None and code not in wanted:
                continue
            loc = str(row["dimensions.location.id"] or "")
            cur = by_location.get(loc.upper(), loc.lower())
            sign = 1 if row["txnType"] == "debit" else -1
            sums.setdefault(cur, {}).setdefault(code, Decimal(0))
            sums[cur][code] += sign * Decimal(row["txnAmount"])
        return {
            cur: {code: f"{v:.{exponent(cur)}f}" for code, v in sorted(accts.items())} for cur, accts in sums.items()
        }

    # -- writes ------------------------------------------------------------------------------------------

    def _create(
        self, resource: str, obj_path: str, body: dict[str, Any], idempotency_key: str, look: Callable[[], str | None]
    ) -> PostResult:
        """Look, POST, and on an unknown outcome look again before any resend."""
        existing = look()
        if existing is not None:
            return PostResult("already_exists", {"key": existing}, existing, "")

        def found() -> PostResult | None:
            key = look()
            return PostResult("already_exists", {"key": key}, key, "") if key else None

        answer = self._request(
            "POST",
            f"objects/{obj_path}",
            json=body,
            headers={"Idempotency-Key": idempotency_key},
            unknown_outcome=found,
        )
        if isinstance(answer, PostResult):
            log.info("intacct %s: an earlier attempt committed, found as %s", resource, answer.sage_id)
            return answer
        if answer.status_code >= 400:
            raise to_exception(answer.status_code, _json(answer), what=f"create {resource}")
        ref = answer.json()["ia::result"]
        return PostResult("created", ref, str(ref["key"]), answer.headers.get("x-request-id", ""))

    def post(self, resource: str, body: dict[str, Any], *, idempotency_key: str, external_ref: str) -> PostResult:
        """Create a journal entry, invoice, cash receipt (payment + fee entry) or customer exactly once."""
        if not idempotency_key or not external_ref:
            raise ValueError("idempotency_key and external_ref are required")
        if resource == JE:
            return self._create(
                JE,
                OBJECT_PATH[JE],
                P.journal_entry(body, external_ref, self.locations),
                idempotency_key,
                lambda: self._lookup(JE, external_ref),
            )
        if resource == INVOICES:
            return self._create(
                INVOICES,
                OBJECT_PATH[INVOICES],
                P.invoice(body, external_ref, self.locations),
                idempotency_key,
                lambda: self._lookup(INVOICES, external_ref),
            )
        if resource == RECEIPTS:
            result = self._create(
                RECEIPTS,
                OBJECT_PATH[RECEIPTS],
                P.payment(body, external_ref),
                idempotency_key,
                lambda: self._lookup(RECEIPTS, external_ref),
            )
            fee_ref = f"{external_ref}~fee"
            fee = P.fee_entry(body, fee_ref, self.locations)
            if fee is not None:
                self._create(JE, OBJECT_PATH[JE], fee, f"{idempotency_key}-fee", lambda: self._lookup(JE, fee_ref))
            return result
        if resource == CUSTOMERS:
            custno = body["custno"]
            result = self._create(
                CUSTOMERS,
                OBJECT_PATH[CUSTOMERS],
                P.customer(body, external_ref),
                idempotency_key,
                lambda: self._lookup(CUSTOMERS, custno),
            )
            record = self._get(CUSTOMERS, result.sage_id)
            if result.status == "already_exists" and record.get("notes") != f"{P.STRIPE_NOTE}{external_ref}":
                raise Conflict(
                    f"Intacct customer {custno} exists but belongs to {record.get('notes') or 'no Stripe'}"
                    f" customer, not {external_ref}",
                    status=409,
                    code="RecordDuplicate",
                    details=[
                        {"field": "custno", "code": "RecordDuplicate", "message": f"customer id {custno} is taken"}
                    ],
                )
            shaped = P.customer_record(record)
            return PostResult(result.status, shaped, str(record["id"]), result.request_id)
        raise ValueError(f"resource must be one of {sorted(OBJECT_PATH)}, not {resource!r}")

    def reverse_journal_entry(
        self,
        sage_id: str,
        idempotency_key: str,
        *,
        posting_date: date | str | None,
        external_ref: str,
        description: str,
    ) -> PostResult:
        """Post the mirror of entry `sage_id` (debits ↔ credits) under `external_ref`; found if it exists."""
        existing = self._lookup(JE, external_ref)
        if existing is not None:
            return PostResult("already_exists", {"key": existing}, existing, "")
        original = self._get(JE, sage_id)  # NotFound: the engine dead-letters the correction
        day = str(posting_date or original["postingDate"])
        body = P.reversal(original, external_ref, day, description)
        return self._create(JE, OBJECT_PATH[JE], body, idempotency_key, lambda: self._lookup(JE, external_ref))

    def update_customer(self, custno: str, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """PATCH the customer with id `custno`; `NotFound` when there is none."""
        key = self._lookup(CUSTOMERS, custno)
        if key is None:
            raise NotFound(f"Intacct customer {custno} not found", status=404, code="notFound")
        patch = P.customer(body)
        self._ok(
            self._request(
                "PATCH",
                f"objects/{OBJECT_PATH[CUSTOMERS]}/{key}",
                json=patch,
                headers={"Idempotency-Key": idempotency_key},
            ),
            f"update customer {custno}",
        )
        return P.customer_record(self._get(CUSTOMERS, key))

    def changed_customers(self, updated_since: str | None) -> Iterator[dict[str, Any]]:
        """Customers modified after the cursor, in the Sage Pro shape (`external_ref` from `notes`)."""
        filters = [{"$gt": {"audit.modifiedDateTime": updated_since}}] if updated_since else None
        for row in self.query(
            "accounts-receivable/customer", CUSTOMER_FIELDS, filters, [{"audit.modifiedDateTime": "asc"}]
        ):
            yield P.customer_record(_nest(row))


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}


__all__ = ["DEFAULT_BASE_URL", "IntacctTarget"]
