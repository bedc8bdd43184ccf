"""The Intacct emulator as a Starlette app: OAuth 2.0 token endpoint, bearer auth, a per-client rate
limit, injectable faults, the `/objects/...` routes the pipeline uses and the query service.

Every answer has Intacct's shape: `{"ia::result": …, "ia::meta": …}` on success, and
`{"ia::result": {"ia::error": {code, message, errorId, supportId, details[{code, message, errorId,
target}]}}, "ia::meta": {totalCount, totalSuccess, totalError}}` on failure. Paths are under
`/ia/api/v1`, as on api.intacct.com.
"""

from __future__ import annotations

import collections
import json
import random
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stripe_sage_pipeline.runtime.http_policy import RateLimit, retry_after_header
from stripe_sage_sandboxes.intacct.store import IaError, IntacctStore, field_value, invalid

API_PREFIX = "/ia/api/v1"
DEFAULT_CLIENTS = {"pipeline.app.sandbox": "intacct-sandbox-secret"}
DEFAULT_USERNAME = "pipeline@STRIPESAGE"
FAULT_KINDS = ("ok", "429", "503", "commit-504", "401")
MAX_QUERY_SIZE = 4000


@dataclass
class IntacctEmulatorConfig:
    """What shapes one emulator instance; fault rates are probabilities per API request (0..1)."""

    clients: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CLIENTS))
    usernames: tuple[str, ...] = (DEFAULT_USERNAME,)
    token_ttl_s: int = 3600
    rate_per_minute: int = 6000
    seed: int = 0
    fault_429_rate: float = 0.0
    fault_503_rate: float = 0.0
    fault_commit_504_rate: float = 0.0
    retry_after_s: int = 1
    closed_periods: list[str] = field(default_factory=list)
    inactive_accounts: tuple[str, ...] = ()

    def __repr__(self) -> str:  # client secrets stay out of logs
        return f"IntacctEmulatorConfig(clients={sorted(self.clients)}, rate_per_minute={self.rate_per_minute}, ...)"


@dataclass
class LogEntry:
    """One request as the emulator saw it (for tests)."""

    method: str
    path: str
    status: int
    body: Any
    response: Any
    headers: dict[str, str]


def envelope_error(err: IaError) -> dict[str, Any]:
    """An `ia::error` envelope."""
    error: dict[str, Any] = {
        "code": err.code,
        "message": err.message,
        "errorId": err.error_id,
        "supportId": uuid.uuid4().hex[:24],
    }
    if err.details:
        error["details"] = err.details
    return {"ia::result": {"ia::error": error}, "ia::meta": {"totalCount": 1, "totalSuccess": 0, "totalError": 1}}


def ref(obj_path: str, rec: dict[str, Any]) -> dict[str, Any]:
    """An `object-reference`."""
    return {"key": rec["key"], "id": rec["id"], "href": f"{API_PREFIX}/objects/{obj_path}/{rec['key']}"}


class IntacctEmulatorApp:
    """State plus the ASGI app (`.asgi`)."""

    def __init__(self, config: IntacctEmulatorConfig | None = None) -> None:
        self.config = config or IntacctEmulatorConfig()
        self.store = IntacctStore(self.config.closed_periods, inactive_accounts=self.config.inactive_accounts)
        self.tokens: dict[str, tuple[str, float]] = {}  # access token -> (client id, expiry)
        self.refresh_tokens: dict[str, str] = {}
        self.request_log: collections.deque[LogEntry] = collections.deque(maxlen=20000)
        self._faults: collections.deque[str] = collections.deque()
        self.faults_injected: collections.Counter[str] = collections.Counter()  # by kind, however long the run
        self._random = random.Random(self.config.seed)
        # One budget for the company: `rate_per_minute` in any minute, a sixth of it in any one second.
        rate = max(1, self.config.rate_per_minute)
        self._limit = RateLimit(per_minute=rate, burst=max(1, rate // 6))
        self._lock = threading.Lock()
        p = API_PREFIX
        routes = [
            Route(f"{p}/oauth2/token", self.token, methods=["POST"]),
            Route(f"{p}/objects/general-ledger/account", self.api(self.list_accounts), methods=["GET"]),
            Route(f"{p}/objects/general-ledger/journal-entry", self.api(self.create_entry), methods=["POST"]),
            Route(f"{p}/objects/general-ledger/journal-entry/{{key}}", self.api(self.get_entry), methods=["GET"]),
            Route(f"{p}/objects/accounts-receivable/customer", self.api(self.create_customer), methods=["POST"]),
            Route(
                f"{p}/objects/accounts-receivable/customer/{{key}}", self.api(self.customer), methods=["GET", "PATCH"]
            ),
            Route(f"{p}/objects/accounts-receivable/invoice", self.api(self.create_invoice), methods=["POST"]),
            Route(f"{p}/objects/accounts-receivable/invoice/{{key}}", self.api(self.get_invoice), methods=["GET"]),
            Route(f"{p}/objects/accounts-receivable/payment", self.api(self.create_payment), methods=["POST"]),
            Route(f"{p}/objects/accounts-receivable/payment/{{key}}", self.api(self.get_payment), methods=["GET"]),
            Route(f"{p}/services/core/query", self.api(self.query), methods=["POST"]),
        ]
        self.asgi = Starlette(routes=routes)

    # -- test hooks ------------------------------------------------------------------------------------

    def queue_faults(self, *faults: str) -> None:
        """Force faults on the next API requests: "429", "503", "commit-504" (commit, then 504), "401", or "ok"."""
        for f in faults:
            if f not in FAULT_KINDS:
                raise ValueError(f"fault must be one of {FAULT_KINDS}, not {f!r}")
        with self._lock:
            self._faults.extend(faults)

    def expire_tokens(self) -> None:
        """Make every issued access token expired (the next API request answers 401)."""
        with self._lock:
            self.tokens = {t: (c, 0.0) for t, (c, _) in self.tokens.items()}

    # -- OAuth 2.0 --------------------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        """`POST /oauth2/token`: client_credentials (with username) or refresh_token grants, form-encoded."""
        # application/x-www-form-urlencoded, parsed without python-multipart.
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        grant = form.get("grant_type")
        if not client_id or self.config.clients.get(str(client_id)) != secret:
            return JSONResponse({"error": "invalid_client", "error_description": "unknown client or wrong secret"}, 401)
        if grant == "client_credentials":
            if form.get("username") not in self.config.usernames:
                return JSONResponse({"error": "invalid_grant", "error_description": "unknown web services user"}, 400)
        elif grant == "refresh_token":
            if self.refresh_tokens.get(str(form.get("refresh_token"))) != client_id:
                return JSONResponse({"error": "invalid_grant", "error_description": "refresh token not valid"}, 400)
        else:
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        access = secrets.token_urlsafe(24)
        refresh = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[access] = (str(client_id), time.time() + self.config.token_ttl_s)
            self.refresh_tokens[refresh] = str(client_id)
        self.request_log.append(LogEntry("POST", "/oauth2/token", 200, {"grant_type": grant}, None, {}))
        return JSONResponse(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": self.config.token_ttl_s,
                "refresh_token": refresh,
            }
        )

    # -- the API wrapper: auth, limits, faults, envelopes, log ------------------------------------------

    def api(self, handler):
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
                if request.method in ("POST", "PATCH"):
                    return self._answer(
                        request, body, IaError(400, "invalidRequest", "The payload is not valid JSON", "REST-1026")
                    )
            fault = self._next_fault()
            auth = request.headers.get("authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else ""
            with self._lock:
                holder = self.tokens.get(token)
            if fault == "401" or holder is None or holder[1] < time.time():
                return self._answer(
                    request,
                    body,
                    IaError(401, "invalidToken", "The access token is missing, invalid or expired", "IA-0401"),
                )
            wait = self._limit.take()
            if fault == "429" or wait is not None:
                return self._answer(
                    request,
                    body,
                    IaError(429, "tooManyRequests", "Rate limit exceeded", "IA-0429"),
                    {"Retry-After": retry_after_header(wait) if wait is not None else str(self.config.retry_after_s)},
                )
            if fault == "503":
                return self._answer(
                    request,
                    body,
                    IaError(503, "serviceUnavailable", "Service unavailable", "IA-0503"),
                    {"Retry-After": str(self.config.retry_after_s)},
                )
            if request.method in ("POST", "PATCH") and not isinstance(body, dict):
                return self._answer(
                    request,
                    body,
                    IaError(400, "invalidRequest", f"A {request.method} request requires a payload", "REST-1028"),
                )
            try:
                status, result = handler(request, body)
            except IaError as err:
                return self._answer(request, body, err)
            if fault == "commit-504":
                # Committed, but the answer never reaches the client.
                self.request_log.append(
                    LogEntry(request.method, request.url.path, 504, body, result, dict(request.headers))
                )
                return Response("gateway timeout", 504)
            return self._answer(request, body, (status, result))

        return endpoint

    def _next_fault(self) -> str | None:
        fault = self._draw_fault()
        if fault is not None:
            with self._lock:
                self.faults_injected[fault] += 1
        return fault

    def _draw_fault(self) -> str | None:
        with self._lock:
            if self._faults:
                fault = self._faults.popleft()
                return None if fault == "ok" else fault
            r = self._random.random()
        c = self.config
        if r < c.fault_429_rate:
            return "429"
        if r < c.fault_429_rate + c.fault_503_rate:
            return "503"
        if r < c.fault_429_rate + c.fault_503_rate + c.fault_commit_504_rate:
            return "commit-504"
        return None

    def _answer(
        self, request: Request, body: Any, outcome: IaError | tuple[int, Any], headers: dict[str, str] | None = None
    ) -> Response:
        if isinstance(outcome, IaError):
            status, payload = outcome.status, envelope_error(outcome)
        else:
            status, payload = outcome
        self.request_log.append(
            LogEntry(
                request.method,
                request.url.path,
                status,
                body,
                payload,
                {k.lower(): v for k, v in request.headers.items()},
            )
        )
        return JSONResponse(payload, status, headers=headers)

    # -- handlers (sync: the store has its own lock) -----------------------------------------------------

    @staticmethod
    def _created(obj_path: str, rec: dict[str, Any]) -> tuple[int, Any]:
        return 201, {
            "ia::result": ref(obj_path, rec),
            "ia::meta": {"totalCount": 1, "totalSuccess": 1, "totalError": 0},
        }

    @staticmethod
    def _one(rec: dict[str, Any] | None, what: str, key: str) -> tuple[int, Any]:
        if rec is None:
            raise IaError(404, "notFound", f"{what} {key} not found", "REST-1015")
        public = {k: v for k, v in rec.items() if not k.startswith("_")}  # the emulator's own bookkeeping
        return 200, {"ia::result": public, "ia::meta": {"totalCount": 1, "totalSuccess": 1, "totalError": 0}}

    def list_accounts(self, request: Request, body: Any) -> tuple[int, Any]:
        accts = list(self.store.books.accounts.values())
        return 200, {
            "ia::result": [ref("general-ledger/account", a) for a in accts],
            "ia::meta": {"totalCount": len(accts), "start": 1, "pageSize": len(accts), "next": None, "previous": None},
        }

    def create_entry(self, request: Request, body: Any) -> tuple[int, Any]:
        return self._created("general-ledger/journal-entry", self.store.create_journal_entry(body))

    def get_entry(self, request: Request, body: Any) -> tuple[int, Any]:
        key = request.path_params["key"]
        return self._one(self.store.books.entries.get(key), "journal entry", key)

    def create_customer(self, request: Request, body: Any) -> tuple[int, Any]:
        return self._created("accounts-receivable/customer", self.store.create_customer(body))

    def customer(self, request: Request, body: Any) -> tuple[int, Any]:
        key = request.path_params["key"]
        if request.method == "PATCH":
            rec = self.store.update_customer(key, body)
            return 200, {
                "ia::result": ref("accounts-receivable/customer", rec),
                "ia::meta": {"totalCount": 1, "totalSuccess": 1, "totalError": 0},
            }
        return self._one(self.store.books.customers.get(key), "customer", key)

    def create_invoice(self, request: Request, body: Any) -> tuple[int, Any]:
        return self._created("accounts-receivable/invoice", self.store.create_invoice(body))

    def get_invoice(self, request: Request, body: Any) -> tuple[int, Any]:
        key = request.path_params["key"]
        return self._one(self.store.books.invoices.get(key), "invoice", key)

    def create_payment(self, request: Request, body: Any) -> tuple[int, Any]:
        return self._created("accounts-receivable/payment", self.store.create_payment(body))

    def get_payment(self, request: Request, body: Any) -> tuple[int, Any]:
        key = request.path_params["key"]
        return self._one(self.store.books.payments.get(key), "payment", key)

    def query(self, request: Request, body: Any) -> tuple[int, Any]:
        """`POST /services/core/query`: object, fields, filters ($eq $ne $lt $lte $gt $gte $in), orderBy, start, size."""
        obj = body.get("object")
        fields = body.get("fields") or ["key", "id"]
        if not isinstance(obj, str) or not isinstance(fields, list):
            raise invalid("Payload contains errors", [("REST-1013", "/object", "object and fields are required")])
        if (body.get("filterExpression") or "and") != "and":
            raise invalid("Payload contains errors", [("EMU-QUERY", "/filterExpression", "only 'and' is emulated")])
        rows = self.store.records(obj)
        for i, flt in enumerate(body.get("filters") or []):
            ((op, cond),) = flt.items()
            ((path, value),) = cond.items()
            rows = [r for r in rows if _match(op, field_value(r, path), value, f"/filters/{i}")]
        for order in reversed(body.get("orderBy") or []):
            ((path, direction),) = order.items()
            rows.sort(key=lambda r, p=path: str(field_value(r, p) or ""), reverse=direction == "desc")
        start = int(body.get("start") or 1)
        size = min(int(body.get("size") or 100), MAX_QUERY_SIZE)
        page = rows[start - 1 : start - 1 + size]
        result = [{f: field_value(r, f) for f in fields} for r in page]
        nxt = start + size if start - 1 + size < len(rows) else None
        return 200, {
            "ia::result": result,
            "ia::meta": {
                "totalCount": len(rows),
                "start": start,
                "pageSize": size,
                "next": nxt,
                "previous": max(1, start - size) if start > 1 else None,
            },
        }


def _match(op: str, have: Any, want: Any, target: str) -> bool:
    if op == "$eq":
        return have == want
    if op == "$ne":
        return have != want
    if op == "$in":
        return have in want
    if have is None:
        return False
    if op == "$lt":
        return str(have) < str(want)
    if op == "$lte":
        return str(have) <= str(want)
    if op == "$gt":
        return str(have) > str(want)
    if op == "$gte":
        return str(have) >= str(want)
    raise invalid("Payload contains errors", [("EMU-QUERY", target, f"operator {op} is not emulated")])
