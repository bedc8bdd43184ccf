"""The Sage Pro sandbox as a Starlette app: auth, limits, faults, idempotency and the resource routes.

The contract is docs/sage-pro-contract.md (served as OpenAPI at `/sagepro/v1/openapi.yaml`).
Everything a real facade does at the HTTP edge happens here; the books themselves live in `store.py`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import hmac
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stripe_sage_pipeline.runtime.http_policy import RateLimit, retry_after_header
from stripe_sage_sandboxes.sage.store import SageStore
from stripe_sage_sandboxes.sage.validation import DATE_RE as _DATE_RE
from stripe_sage_sandboxes.sage.validation import ApiError, Detail, parse_timestamp

log = logging.getLogger(__name__)

API_PREFIX = "/sagepro/v1"
COMPANY_PREFIX = API_PREFIX + "/{company}"
# The contract is the pipeline's own document: the sandbox serves exactly what the client is written to.
OPENAPI_PATH = Path(str(resources.files("stripe_sage_pipeline.sage") / "openapi.yaml"))
DEFAULT_USERS: dict[str, tuple[str, frozenset[str]]] = {
    "pipeline": ("pipeline-secret", frozenset({"read", "post"})),
    "admin": ("admin-secret", frozenset({"read", "post", "admin"})),
}


@dataclass
class SageSandboxConfig:
    """Everything that shapes one sandbox instance; rates are probabilities per request (0..1)."""

    data_dir: Path
    company: str = "PRO01"
    users: dict[str, tuple[str, set[str] | frozenset[str]]] | None = None
    rate_per_minute: int = 120
    burst: int | None = None  # most requests in any one second; None: ten seconds' worth of the rate, at least 1
    max_concurrent: int = 4
    seed: int = 0
    fault_429_rate: float = 0.0
    fault_5xx_rate: float = 0.0
    fault_commit_504_rate: float = 0.0
    fault_retry_after_s: int = 1
    latency_ms: int = 0
    faults_enabled: bool = False
    closed_periods: list[str] = field(default_factory=list)
    base_currency: str = "USD"
    extra_accounts: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def db_path(self) -> Path:
        """The SQLite file holding the books."""
        return Path(self.data_dir) / f"sage-{self.company}.sqlite3"

    def resolved_users(self) -> dict[str, tuple[str, frozenset[str]]]:
        """Configured users, or the sandbox defaults."""
        if not self.users:
            return dict(DEFAULT_USERS)
        return {name: (pw, frozenset(roles)) for name, (pw, roles) in self.users.items()}

    def __repr__(self) -> str:  # user passwords must not reach logs through the config either
        users = {name: ("***", sorted(roles)) for name, (_, roles) in self.resolved_users().items()}
        return f"SageSandboxConfig(data_dir={str(self.data_dir)!r}, company={self.company!r}, users={users!r}, ...)"


class RateLimiter:
    """Per user: `rate_per_minute` in any minute, at most `burst` in any second (the pipeline's shared
    `RateLimit`, a moving window) and a cap on requests in flight, as a hosted Sage facade applies them."""

    def __init__(self, rate_per_minute: int, burst: int | None, max_concurrent: int) -> None:
        rate = max(rate_per_minute, 1)
        self.rate = RateLimit(per_minute=rate, burst=burst if burst is not None else max(1, rate // 6))
        self.max_concurrent = max_concurrent
        self._inflight: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def acquire(self, user: str) -> str | None:
        """Take a place in the window and a slot; None when granted, else the `Retry-After` value (seconds)."""
        with self._lock:
            if self._inflight[user] >= self.max_concurrent:
                return "1"
            wait = self.rate.take(user)
            if wait is not None:
                return retry_after_header(wait)
            self._inflight[user] += 1
            return None

    def release(self, user: str) -> None:
        """Give the concurrency slot back."""
        with self._lock:
            self._inflight[user] -= 1


@dataclass
class RequestLogEntry:
    """What the sandbox saw of one API request (tests measure retry timing with it)."""

    at: float  # time.monotonic() on arrival
    method: str
    path: str
    user: str | None
    idempotency_key: str | None
    status: int = 0
    fault: str | None = None


class RequestIdMiddleware:
    """Gives every request an id and every response an `X-Request-Id`, error pages included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


@dataclass
class _Op:
    handler: Callable[[_Ctx], tuple[int, Any]]
    role: str | None  # None: no authentication at all
    write: bool = False
    filters: frozenset[str] = frozenset()


@dataclass
class _Ctx:
    user: str
    params: dict[str, str]
    query: dict[str, Any]
    body: dict[str, Any]
    top: int = 100
    skip: int = 0


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@cache
def _openapi_document() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))


class SageSandboxApp:
    """The sandbox application: build it from a config, serve `.asgi` with any ASGI server."""

    def __init__(self, config: SageSandboxConfig) -> None:
        self.config = config
        self.users = config.resolved_users()
        self.store = SageStore(
            config.db_path,
            base_currency=config.base_currency,
            closed_periods=config.closed_periods,
            extra_accounts=config.extra_accounts,
        )
        self.limiter = RateLimiter(config.rate_per_minute, config.burst, config.max_concurrent)
        self._rng = random.Random(config.seed)
        self._fault_lock = threading.Lock()
        self._queued_faults: collections.deque[str] = collections.deque()
        self._inflight: set[tuple[str, str]] = set()
        self._inflight_lock: asyncio.Lock | None = None
        self.request_log: collections.deque[RequestLogEntry] = collections.deque(maxlen=100_000)
        self.ops: dict[tuple[str, str], _Op] = {}
        self.asgi: ASGIApp = RequestIdMiddleware(self._build())

    # -- public hooks for tests and demos ------------------------------------------------------------

    def queue_faults(self, *faults: str) -> None:
        """Force faults on the next API requests, in order (e.g. "429", "commit-504", "latency=200")."""
        with self._fault_lock:
            self._queued_faults.extend(faults)

    def keys_in_flight(self) -> set[str]:
        """Idempotency-Keys of write requests executing now (a second request with one gets a 409)."""
        return {key for _, key in set(self._inflight)}

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    # -- routing -----------------------------------------------------------------------------------

    def _build(self) -> Starlette:
        s = self.store
        paged = {
            "accounts": frozenset({"type", "active"}),
            "periods": frozenset({"status", "from", "to"}),
            "customers": frozenset({"external_ref", "custno", "updated_since"}),
            "invoices": frozenset({"external_ref", "custno", "doc_type", "from", "to"}),
            "cash-receipts": frozenset({"external_ref", "custno", "from", "to"}),
            "journal-entries": frozenset({"external_ref", "journal", "status", "from", "to"}),
            "gl-postings": frozenset(
                {"glacnt", "currency", "source", "doc_type", "doc_no", "batch_no", "external_ref", "from", "to"}
            ),
        }

        def lister(fn: Callable[[dict[str, Any], int, int], tuple[list[dict[str, Any]], int]]) -> Callable:
            return lambda ctx: (200, ("page", *fn(ctx.query, ctx.top, ctx.skip)))

        def creator(fn: Callable[[dict[str, Any], str], dict[str, Any]]) -> Callable:
            return lambda ctx: (201, fn(ctx.body, ctx.user))

        table: dict[str, dict[str, _Op]] = {
            "/health": {"GET": _Op(lambda ctx: (200, self._health()), None)},
            "/accounts": {"GET": _Op(lister(s.list_accounts), "read", filters=paged["accounts"])},
            "/accounts/{glacnt}": {"GET": _Op(lambda ctx: (200, s.get_account(ctx.params["glacnt"])), "read")},
            "/accounts/{glacnt}/balance": {
                "GET": _Op(
                    lambda ctx: (
                        200,
                        s.account_balance(ctx.params["glacnt"], ctx.query.get("from"), ctx.query.get("to")),
                    ),
                    "read",
                    filters=frozenset({"from", "to"}),
                )
            },
            "/periods": {"GET": _Op(lister(s.list_periods), "read", filters=paged["periods"])},
            "/periods/{period_id}": {
                "GET": _Op(lambda ctx: (200, self._get_period(ctx.params["period_id"])), "read"),
                "PATCH": _Op(self._patch_period, "admin", write=True),
            },
            "/customers": {
                "GET": _Op(lister(s.list_customers), "read", filters=paged["customers"]),
                "POST": _Op(creator(s.create_customer), "post", write=True),
            },
            "/customers/{custno}": {
                "GET": _Op(lambda ctx: (200, s.get_customer(ctx.params["custno"])), "read"),
                "PATCH": _Op(lambda ctx: (200, s.update_customer(ctx.params["custno"], ctx.body)), "post", write=True),
            },
            "/invoices": {
                "GET": _Op(lister(s.list_invoices), "read", filters=paged["invoices"]),
                "POST": _Op(creator(s.create_invoice), "post", write=True),
            },
            "/invoices/{invno}": {"GET": _Op(lambda ctx: (200, s.get_invoice(ctx.params["invno"])), "read")},
            "/cash-receipts": {
                "GET": _Op(lister(s.list_cash_receipts), "read", filters=paged["cash-receipts"]),
                "POST": _Op(creator(s.create_cash_receipt), "post", write=True),
            },
            "/cash-receipts/{receipt_no}": {
                "GET": _Op(lambda ctx: (200, s.get_cash_receipt(ctx.params["receipt_no"])), "read")
            },
            "/journal-entries": {
                "GET": _Op(lister(s.list_journal_entries), "read", filters=paged["journal-entries"]),
                "POST": _Op(creator(s.create_journal_entry), "post", write=True),
            },
            "/journal-entries/{batch_no}": {
                "GET": _Op(lambda ctx: (200, s.get_journal_entry(ctx.params["batch_no"])), "read")
            },
            "/journal-entries/{batch_no}/reverse": {
                "POST": _Op(
                    lambda ctx: (201, s.reverse_journal_entry(ctx.params["batch_no"], ctx.body, ctx.user)),
                    "post",
                    write=True,
                )
            },
            "/gl-postings": {"GET": _Op(lister(self._gl_postings), "read", filters=paged["gl-postings"])},
        }
        routes = [
            Route(API_PREFIX + "/openapi.yaml", self._openapi_yaml, methods=["GET"]),
            Route(API_PREFIX + "/openapi.json", self._openapi_json, methods=["GET"]),
        ]
        for path, methods in table.items():
            for method, op in methods.items():
                self.ops[(path, method)] = op
            routes.append(Route(COMPANY_PREFIX + path, self._endpoint(path), methods=list(methods)))
        return Starlette(
            routes=routes,
            exception_handlers={HTTPException: self._http_exception, Exception: self._server_error},
        )

    def _endpoint(self, path: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            # Starlette answers HEAD on GET routes; it runs the GET operation (the body is dropped).
            method = "GET" if request.method == "HEAD" else request.method
            return await self._run(request, path, self.ops[(path, method)])

        return endpoint

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            message = f"{request.method} is not allowed here"
            if "/journal-entries/" in request.url.path:
                message = "Posted journal entries are immutable: reverse them with POST .../reverse instead"
            err = ApiError(405, "MethodNotAllowed", message, headers=dict(exc.headers or {}))
        elif exc.status_code == 404:
            err = ApiError(404, "RecordNotFound", f"No route for {request.url.path}")
        else:
            err = ApiError(exc.status_code, "InvalidPayload", str(exc.detail))
        return self._error_response(request, err)

    async def _server_error(self, request: Request, exc: Exception) -> Response:
        log.exception("sandbox error on %s %s", request.method, request.url.path)
        return self._error_response(request, ApiError(500, "InternalError", "Unexpected sandbox error"))

    # -- request pipeline ------------------------------------------------------------------------

    @staticmethod
    def _error_response(request: Request, err: ApiError) -> Response:
        payload = {
            "error": {
                "code": err.code,
                "message": err.message,
                "details": [d.as_dict() for d in err.details],
                "request_id": request.state.request_id,
            }
        }
        return Response(_json_bytes(payload), err.status, headers=err.headers, media_type="application/json")

    def _authenticate(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        unauthorized = ApiError(
            401,
            "Unauthorized",
            "Missing or invalid credentials (HTTP Basic)",
            headers={"WWW-Authenticate": 'Basic realm="Sage Pro sandbox"'},
        )
        if scheme.lower() != "basic" or not token:
            raise unauthorized
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise unauthorized from None
        expected = self.users.get(user)
        # Compare even for unknown users so timing does not reveal which user names exist.
        ok = hmac.compare_digest(password.encode(), (expected[0] if expected else "\0").encode())
        if not sep or expected is None or not ok:
            raise unauthorized
        return user

    def _next_fault(self, request: Request, write: bool) -> list[str]:
        """The faults for this request: the header, else a queued one, else a seeded draw."""
        header = request.headers.get("x-sandbox-fault")
        if header and self.config.faults_enabled:
            return [f.strip() for f in header.split(",") if f.strip()]
        cfg = self.config
        with self._fault_lock:
            if self._queued_faults:
                return [self._queued_faults.popleft()]
            if not (cfg.fault_429_rate or cfg.fault_5xx_rate or cfg.fault_commit_504_rate):
                return []
            u = self._rng.random()
        if u < cfg.fault_429_rate:
            return ["429"]
        u -= cfg.fault_429_rate
        if u < cfg.fault_5xx_rate:
            return ["503"]
        u -= cfg.fault_5xx_rate
        if write and u < cfg.fault_commit_504_rate:
            return ["commit-504"]
        return []

    async def _run(self, request: Request, path: str, op: _Op) -> Response:
        entry = RequestLogEntry(
            time.monotonic(), request.method, request.url.path, None, request.headers.get("idempotency-key")
        )
        self.request_log.append(entry)
        try:
            response = await self._run_inner(request, op, entry)
        except ApiError as err:
            response = self._error_response(request, err)
        except Exception:  # every answer, even a bug's, keeps the envelope and the request id
            log.exception("sandbox error on %s %s", request.method, request.url.path)
            response = self._error_response(request, ApiError(500, "InternalError", "Unexpected sandbox error"))
        entry.status = response.status_code
        return response

    async def _run_inner(self, request: Request, op: _Op, entry: RequestLogEntry) -> Response:
        if request.path_params.get("company") != self.config.company:
            raise ApiError(404, "RecordNotFound", f"Company {request.path_params.get('company')!r} does not exist")
        if op.role is None:
            status, payload = op.handler(_Ctx("", {}, {}, {}))
            return Response(_json_bytes(payload), status, media_type="application/json")
        user = self._authenticate(request)
        entry.user = user
        roles = self.users[user][1]
        if op.role not in roles:
            raise ApiError(403, "Forbidden", f"User {user!r} lacks the {op.role!r} role for {request.method}")
        wait = self.limiter.acquire(user)
        if wait is not None:
            raise ApiError(
                429, "TooManyRequests", f"Rate limit exceeded; retry in {wait} s", headers={"Retry-After": wait}
            )
        try:
            return await self._limited(request, op, user, entry)
        finally:
            self.limiter.release(user)

    async def _limited(self, request: Request, op: _Op, user: str, entry: RequestLogEntry) -> Response:
        faults = self._next_fault(request, op.write)
        entry.fault = ",".join(faults) or None
        latency_ms = self.config.latency_ms
        commit_504 = False
        retry_after = {"Retry-After": str(self.config.fault_retry_after_s)}
        for fault in faults:
            if fault.startswith("latency="):
                latency_ms += int(fault.partition("=")[2] or 0)
            elif fault == "429":
                raise ApiError(429, "TooManyRequests", "Rate limit exceeded (injected)", headers=retry_after)
            elif fault == "503":
                raise ApiError(503, "ServiceUnavailable", "Service unavailable (injected)", headers=retry_after)
            elif fault == "500":
                raise ApiError(500, "InternalError", "Internal error (injected)")
            elif fault == "commit-504":
                commit_504 = op.write
        ctx = self._context(request, op, user)
        if op.write:
            body = await self._json_body(request)
            ctx.body = body
            key = request.headers.get("idempotency-key")
            if key is not None:
                response = await self._idempotent(request, op, ctx, user, key, latency_ms)
            else:
                response = await self._execute(request, op, ctx, latency_ms)
        else:
            response = await self._execute(request, op, ctx, latency_ms)
        if commit_504:
            # The write is committed (and its response stored for replay); only the answer is lost.
            return self._error_response(
                request, ApiError(504, "GatewayTimeout", "The request timed out (injected after commit)")
            )
        return response

    @staticmethod
    def _context(request: Request, op: _Op, user: str) -> _Ctx:
        ctx = _Ctx(user, dict(request.path_params), {}, {})
        problems: list[Detail] = []
        for name, value in request.query_params.items():
            if name == "$top":
                if not value.isdigit() or not 1 <= int(value) <= 1000:
                    problems.append(Detail("$top", "InvalidValue", "must be an integer from 1 to 1000"))
                else:
                    ctx.top = int(value)
            elif name == "$skip":
                if not value.isdigit():
                    problems.append(Detail("$skip", "InvalidValue", "must be a non-negative integer"))
                else:
                    ctx.skip = int(value)
            elif name not in op.filters:
                # An ignored misspelt filter would return every record: refuse it instead.
                problems.append(Detail(name, "InvalidValue", "unknown query parameter"))
            elif name in ("from", "to") and not _DATE_RE.match(value):
                problems.append(Detail(name, "InvalidValue", "must be a date YYYY-MM-DD"))
            elif name == "updated_since":
                try:
                    ctx.query[name] = parse_timestamp(value)
                except ValueError:
                    problems.append(Detail(name, "InvalidValue", "must be an RFC 3339 timestamp"))
            elif name == "active":
                if value not in ("true", "false"):
                    problems.append(Detail(name, "InvalidValue", "must be true or false"))
                ctx.query[name] = value == "true"
            else:
                ctx.query[name] = value
        if "batch_no" in ctx.query:
            ctx.query["doc_no"] = ctx.query.pop("batch_no")
        if problems:
            raise ApiError(400, "InvalidPayload", "Invalid query parameters", problems)
        return ctx

    @staticmethod
    async def _json_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        ctype = request.headers.get("content-type", "")
        if not raw.strip() and not ctype:
            return {}  # e.g. POST .../reverse with no options
        media = ctype.split(";")[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, "UnsupportedMediaType", f"Content-Type must be application/json, not {ctype or 'none'}")
        try:
            body = json.loads(raw or b"{}", parse_float=Decimal, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "InvalidPayload", f"The body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "InvalidPayload", "The body must be a JSON object")
        return body

    async def _execute(self, request: Request, op: _Op, ctx: _Ctx, latency_ms: int) -> Response:
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        status, payload = await run_in_threadpool(op.handler, ctx)
        if isinstance(payload, tuple) and payload and payload[0] == "page":
            _, rows, count = payload
            payload = {"value": rows, "count": count, "next": self._next_link(request, ctx, len(rows), count)}
        headers = {}
        if status == 201 and isinstance(payload, dict):
            ident = next((payload[k] for k in ("batch_no", "invno", "receipt_no", "custno") if k in payload), None)
            if ident:
                collection = "journal-entries" if "batch_no" in payload else request.url.path.rstrip("/").split("/")[4]
                headers["Location"] = f"{API_PREFIX}/{self.config.company}/{collection}/{ident}"
        return Response(_json_bytes(payload), status, headers=headers, media_type="application/json")

    @staticmethod
    def _next_link(request: Request, ctx: _Ctx, returned: int, count: int) -> str | None:
        if ctx.skip + returned >= count or returned == 0:
            return None
        return str(request.url.include_query_params(**{"$skip": ctx.skip + returned, "$top": ctx.top}))

    async def _idempotent(self, request: Request, op: _Op, ctx: _Ctx, user: str, key: str, latency_ms: int) -> Response:
        if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
            raise ApiError(
                400,
                "InvalidPayload",
                "Idempotency-Key must be 1 to 255 printable ASCII characters",
                [Detail("Idempotency-Key", "FieldTooLong", "1 to 255 printable ASCII characters")],
            )
        canonical = json.dumps(ctx.body, sort_keys=True, separators=(",", ":"), default=str)
        fingerprint = hashlib.sha256(f"{request.method} {request.url.path}\n{canonical}".encode()).hexdigest()
        # Look-up and in-flight registration are one step, so two racing requests never both execute.
        # An asyncio lock: it is held across an await, which would deadlock a threading lock.
        if self._inflight_lock is None:
            self._inflight_lock = asyncio.Lock()
        lock = self._inflight_lock
        async with lock:
            stored = await run_in_threadpool(self.store.get_idempotent, user, key)
            if stored is None and (user, key) in self._inflight:
                raise ApiError(409, "RequestInProgress", "A request with this Idempotency-Key is still running")
            if stored is None:
                self._inflight.add((user, key))
        if stored is not None:
            if stored["fingerprint"] != fingerprint:
                raise ApiError(
                    422,
                    "IdempotencyKeyMismatch",
                    "This Idempotency-Key was used with a different request",
                    [Detail("Idempotency-Key", "IdempotencyKeyMismatch", "reused with another path or body")],
                )
            headers = {**stored["headers"], "Idempotent-Replayed": "true"}
            return Response(stored["body"].encode(), stored["status"], headers=headers, media_type="application/json")
        try:
            try:
                response = await self._execute(request, op, ctx, latency_ms)
            except ApiError as err:
                response = self._error_response(request, err)
            if response.status_code < 500 and response.status_code != 429:
                kept = {k: v for k, v in response.headers.items() if k.lower() in ("location",)}
                await run_in_threadpool(
                    self.store.put_idempotent,
                    user,
                    key,
                    fingerprint,
                    response.status_code,
                    kept,
                    bytes(response.body).decode(),
                )
            return response
        finally:
            async with lock:
                self._inflight.discard((user, key))

    # -- small handlers --------------------------------------------------------------------------

    def _health(self) -> dict[str, Any]:
        return {"status": "ok", "company": self.config.company, "base_currency": self.config.base_currency}

    def _get_period(self, period_id: str) -> dict[str, Any]:
        rows, _ = self.store.list_periods({}, 1000, 0)
        for row in rows:
            if row["id"] == period_id:
                return row
        raise ApiError(404, "RecordNotFound", f"Period {period_id!r} was not found")

    def _patch_period(self, ctx: _Ctx) -> tuple[int, Any]:
        status = ctx.body.get("status")
        unknown = set(ctx.body) - {"status"}
        if status not in ("open", "closed") or unknown:
            raise ApiError(
                422,
                "RecordInvalid",
                "Only status (open|closed) can change",
                [Detail("status", "InvalidValue", "must be open or closed")],
            )
        return 200, self.store.set_period_status(ctx.params["period_id"], status)

    def _gl_postings(self, query: dict[str, Any], top: int, skip: int) -> tuple[list[dict[str, Any]], int]:
        return self.store.list_gl_postings(query, top, skip)

    async def _openapi_yaml(self, request: Request) -> Response:
        return Response(OPENAPI_PATH.read_bytes(), 200, media_type="application/yaml")

    async def _openapi_json(self, request: Request) -> Response:
        return Response(_json_bytes(_openapi_document()), 200, media_type="application/json")


def create_app(config: SageSandboxConfig) -> SageSandboxApp:
    """Build a sandbox app (its `.asgi` attribute is what an ASGI server runs)."""
    return SageSandboxApp(config)
